"""The OSCAR-style zoo entry: image tags, pollution, collator invariants, objectives (test_zoo_contract checks
shapes, save/load and BERT initialisation)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from pretrained import minilm_checkpoint
from transformers import BertModel
from zoo_inputs import INPUTS, SIZES, train_on

from kbench.baselines.oscar import (
    OscarCollator,
    OscarConfig,
    OscarForPreTraining,
    other_rows,
    pollute,
    tag_vocabulary,
)
from kbench.data.text import load_tokenizer
from kbench.models.zoo import ARCHITECTURE_KEYS

B, T, K, D, V = 6, 12, 16, 24, 200
MASK_ID = 3


def tiny_model(**options) -> OscarForPreTraining:
    torch.manual_seed(0)
    options = {"num_tags": 4, **options}
    config = OscarConfig(vocab_size=V, visual_feature_size=D, patch_scheme="grid-4", **SIZES, **options)
    return OscarForPreTraining(config)


def raw_batch(seed: int = 0, rows: int = B, text_len: int = T) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    words = text_len - 4  # [CLS] w_0 ... w_{n-1} [SEP] then padding
    mask = torch.ones(rows, text_len, dtype=torch.long)
    mask[:, words + 2 :] = 0
    word_ids = torch.arange(text_len).expand(rows, text_len).clone() - 1
    word_ids[:, words + 1 :] = -1
    return {
        "input_ids": torch.randint(5, V, (rows, text_len), generator=g),
        "attention_mask": mask,
        "word_ids": word_ids,
        "patch_features": torch.rand(rows, K, D, generator=g) * 3,
        "patch_locations": torch.rand(rows, K, 5, generator=g),
        "itm_labels": torch.tensor([1, 0]).repeat(rows // 2 + 1)[:rows].roll(1),
        "image_positions": torch.arange(rows),
        "text_positions": torch.arange(rows),
    }


def collate(model: OscarForPreTraining, raw: dict[str, torch.Tensor], seed: int = 1, **kw) -> dict:
    return OscarCollator(model.config, MASK_ID, **kw)(dict(raw), torch.Generator().manual_seed(seed))


def test_collator_masks_text_and_plans_tags() -> None:
    model = tiny_model()
    raw = raw_batch(rows=2000, text_len=40)
    vocabulary = torch.arange(V) % 2 == 0
    batch = collate(model, raw, tag_vocabulary=vocabulary)
    matched = batch["itm_labels"].bool()
    words = raw["word_ids"] >= 0
    # text: every pair corrupted alike, labels only on matched pairs and equal to the original ids
    assert (batch["input_ids"] != raw["input_ids"]).any(dim=1).float().mean() > 0.95
    labelled = batch["mlm_labels"] != -100
    assert labelled[matched].any(dim=1).all() and not labelled[~matched].any()
    assert not (labelled & ~words).any(), "never [CLS], [SEP] or padding"
    assert torch.equal(batch["mlm_labels"][labelled], raw["input_ids"][labelled])
    corrupted = batch["input_ids"] != raw["input_ids"]
    share = (corrupted | labelled)[matched][words[matched]].float().mean().item()
    assert abs(share - 0.15) < 0.01
    # tag targets: the matched description's eligible word pieces, nothing for mismatched pairs
    assert not batch["tag_targets"][~matched].any()
    for i in torch.nonzero(matched)[:20, 0]:
        expected = torch.zeros(V, dtype=torch.bool)
        expected[raw["input_ids"][i][words[i]]] = True
        assert torch.equal(batch["tag_targets"][i], expected & vocabulary)
    # tag slots: 15 % chosen on every pair, BERT's 80/10/10 as replacements, -1 (keep) elsewhere
    slots, replacements = batch["tag_mask"], batch["tag_replacements"]
    assert slots.shape == replacements.shape == (2000, 4)
    assert abs(slots.float().mean().item() - 0.15) < 0.01
    assert abs(slots[matched].float().mean() - slots[~matched].float().mean()) < 0.03
    assert (replacements[~slots] == -1).all()
    chosen = replacements[slots]
    assert abs((chosen == MASK_ID).float().mean().item() - 0.8) < 0.04
    assert abs((chosen == -1).float().mean().item() - 0.1) < 0.03
    # pollution: half the rows, each from another row
    assert abs(batch["polluted"].float().mean().item() - 0.5) < 0.03
    source = batch["pollute_from"]
    assert torch.equal(source.sort().values, torch.arange(2000)) and (source != torch.arange(2000)).all()
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "patch_features",
        "patch_locations",
        "itm_labels",
        "mlm_labels",
        "tag_targets",
        "tag_mask",
        "tag_replacements",
        "polluted",
        "pollute_from",
    }


def test_without_a_vocabulary_every_word_piece_is_a_target_and_a_lone_pair_is_never_polluted() -> None:
    model = tiny_model()
    raw = raw_batch(rows=1)
    raw["itm_labels"] = torch.tensor([1])
    batch = collate(model, raw)
    assert torch.equal(batch["tag_targets"][0].nonzero()[:, 0], raw["input_ids"][0, 1:9].unique())
    assert not batch["polluted"].any() and batch["pollute_from"].tolist() == [0]
    for size in (2, 3, 7):
        source = other_rows(size, torch.Generator().manual_seed(size))
        assert sorted(source.tolist()) == list(range(size)) and (source != torch.arange(size)).all()


def test_tag_vocabulary_keeps_content_words() -> None:
    tokenizer = load_tokenizer("bundled")
    eligible = tag_vocabulary(tokenizer, len(tokenizer))
    ids = tokenizer.convert_tokens_to_ids
    for token in ("dress", "black", "leather", "sleeve", "jacket"):
        assert eligible[ids(token)], token
    for token in ("the", "with", "and", "of", "in", "a", "##ing", "[CLS]", "[MASK]", ",", "xl", "100"):
        assert not eligible[ids(token)], token
    assert 10_000 < eligible.sum() < len(tokenizer)
    config = OscarConfig(vocab_size=len(tokenizer), visual_feature_size=D, **SIZES)
    collator = OscarForPreTraining.pretraining_collator(config, SimpleNamespace(tokenizer=tokenizer))
    assert collator.mask_token_id == tokenizer.mask_token_id and torch.equal(collator.tag_vocabulary, eligible)


def test_tags_are_a_function_of_the_image_alone() -> None:
    model = tiny_model()
    raw = raw_batch()
    inputs = {k: raw[k] for k in INPUTS}
    _, tags = model.vl.predict_tags(raw["patch_features"])
    assert tags.shape == (B, 4)
    # same image, another text and another batch order: the same tags
    flipped = raw["patch_features"].flip(0)
    assert torch.equal(model.vl.predict_tags(flipped)[1], tags.flip(0))
    model.train()  # dropout does not reach the tagger
    assert torch.equal(model.vl.predict_tags(raw["patch_features"])[1], tags)
    model.eval()
    other_text = {**inputs, "input_ids": torch.randint(5, V, (B, T), generator=torch.Generator().manual_seed(9))}
    explicit = model.vl(**other_text, tag_ids=tags).pooler_output
    torch.testing.assert_close(model.pooled_output(**other_text), explicit)
    # and the tags matter: other tags give another joint representation
    assert not torch.allclose(model.vl(**other_text, tag_ids=(tags + 1) % V).pooler_output, explicit)


def shown_words_batch(present: torch.Tensor, words: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Matched pairs whose image features light up the dimensions ``present`` (B, n) and whose texts are
    ``[CLS] words [SEP]`` (``words`` (B, m)), the rest padding."""
    features = torch.rand(B, K, D, generator=g) * 0.1
    for i in range(B):
        features[i, :, present[i]] += 1.0  # the image's features encode which word pieces occur
    m = words.shape[1]
    ids = torch.zeros(B, T, dtype=torch.long)
    ids[:, 0], ids[:, 1 : m + 1], ids[:, m + 1] = 1, words, 2  # [CLS] w ... w [SEP] [PAD]...
    word_ids = torch.full((B, T), -1)
    word_ids[:, 1 : m + 1] = torch.arange(m)
    return {
        "input_ids": ids,
        "attention_mask": (torch.arange(T) < m + 2).long().expand(B, T),
        "word_ids": word_ids,
        "patch_features": features,
        "patch_locations": torch.rand(B, K, 5, generator=g),
        "itm_labels": torch.ones(B, dtype=torch.long),
        "image_positions": torch.arange(B),
        "text_positions": torch.arange(B),
    }


def test_the_tagger_learns_which_word_pieces_an_image_shows() -> None:
    model = tiny_model(num_tags=3)
    g = torch.Generator().manual_seed(0)
    candidates = torch.arange(50, 58)  # 8 word pieces; every image shows 3 of them
    present = torch.stack([torch.randperm(8, generator=g)[:3] for _ in range(B)])
    batch = collate(model, shown_words_batch(present, candidates[present], g))
    features = batch["patch_features"]
    assert torch.equal(batch["tag_targets"].nonzero()[:, 1].view(B, 3), candidates[present].sort().values)
    matched = batch["itm_labels"].bool()
    optimizer = torch.optim.AdamW(model.vl.tagger.parameters(), lr=1e-2)
    for _ in range(120):
        logits, tags = model.vl.predict_tags(features)
        loss, _ = model.tagging_loss(logits, tags, batch["tag_targets"], matched)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    _, tags = model.vl.predict_tags(features)
    for i in range(B):
        assert set(tags[i].tolist()) == set(candidates[present[i]].tolist()), i
    assert model(**batch).accuracies["tag_acc"] == 1.0


def test_tags_are_what_sets_an_image_apart_not_what_every_description_says() -> None:
    """Every description has the words 60 and 61; each image shows 2 of 8 rarer ones, each in at most 2 images.
    Ranked by the raw logit, the common words would be every image's tags; against the mean logit, the rare are."""
    model = tiny_model(num_tags=2)
    g = torch.Generator().manual_seed(0)
    rare = torch.arange(50, 58)
    present = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7], [0, 2], [5, 7]])
    raw = shown_words_batch(present, torch.cat([torch.tensor([60, 61]).expand(B, 2), rare[present]], dim=1), g)
    batch = collate(model, raw)
    features = raw["patch_features"]
    optimizer = torch.optim.AdamW(model.vl.tagger.parameters(), lr=1e-2)
    for _ in range(60):
        model(**batch).losses["tag_loss"].backward()  # a pre-training step also tracks the mean logit
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    logits, tags = model.vl.predict_tags(features)
    assert (logits.topk(2).indices.sort().values == torch.tensor([60, 61])).all()  # the raw ranking
    for i in range(B):
        assert set(tags[i].tolist()) == set(rare[present[i]].tolist()), i
    mean = model.vl.tagger.mean_logits.clone()
    model.vl.predict_tags(features)  # outside pre-training the mean stays put
    model(**collate(model, raw))
    assert torch.equal(model.vl.tagger.mean_logits, mean)


def test_polluted_rows_get_the_other_rows_tags_and_label_0() -> None:
    model = tiny_model().eval()
    raw = raw_batch()
    raw["itm_labels"] = torch.ones(B, dtype=torch.long)
    batch = collate(model, raw)
    batch["tag_mask"][:] = False  # no tag masking, to compare with an explicit forward
    batch["tag_replacements"][:] = -1
    batch["polluted"] = torch.tensor([True, False, True, False, False, False])
    batch["pollute_from"] = torch.tensor([3, 0, 5, 4, 2, 1])
    _, own = model.vl.predict_tags(batch["patch_features"])
    expected = own.clone()
    expected[0], expected[2] = own[3], own[5]
    assert torch.equal(pollute(own, batch["polluted"], batch["pollute_from"]), expected)
    assert not torch.equal(expected, own)
    pooled = model.vl(**{k: batch[k] for k in INPUTS}, tag_ids=expected).pooler_output
    labels = torch.tensor([0, 1, 0, 1, 1, 1])
    direct = F.cross_entropy(model.itm_from_pooled(pooled), labels)
    torch.testing.assert_close(model(**batch).losses["itm_loss"], direct)


def test_without_a_matched_pair_the_tag_loss_is_zero_but_in_the_graph() -> None:
    model = tiny_model()
    batch = collate(model, raw_batch())
    batch["itm_labels"][:] = 0
    batch["mlm_labels"][:] = -100
    out = model(**batch)
    assert out.losses["tag_loss"] == 0 and out.losses["mlm_loss"] == 0 and out.loss.requires_grad


def test_text_and_tags_must_fit_the_position_embeddings() -> None:
    model = tiny_model(max_position_embeddings=T + 3)  # 4 tags do not fit
    inputs = {k: v for k, v in raw_batch().items() if k in INPUTS}
    with pytest.raises(ValueError, match="12 text tokens \\+ 4 tags exceed max_position_embeddings 15"):
        model.itm_logits(**inputs)
    with pytest.raises(ValueError, match="type_vocab_size >= 2"):
        tiny_model(type_vocab_size=1)


def test_every_loss_decreases_on_a_tiny_batch() -> None:
    model = tiny_model()
    batch = collate(model, raw_batch())
    first, last = train_on(model, batch)
    for name in first:
        assert last[name] < 0.7 * first[name], f"{name}: {first[name]:.4f} -> {last[name]:.4f}"


def test_tags_take_berts_second_token_type() -> None:
    bert = BertModel.from_pretrained(str(minilm_checkpoint())).eval()
    arch = {k: getattr(bert.config, k) for k in ARCHITECTURE_KEYS}
    model = OscarForPreTraining(OscarConfig(visual_feature_size=D, **arch)).eval()
    model.load_bert_weights(bert)
    ids = torch.randint(1000, 2000, (2, T), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.vl.embeddings(input_ids=ids), bert.embeddings(input_ids=ids))
    tag_type = model.vl.embeddings.token_type_embeddings.weight[1]
    assert torch.equal(tag_type, bert.embeddings.token_type_embeddings.weight[1])
