"""The ViLBERT zoo entry: two-stream shapes and wiring, objectives, collator invariants, a shallower text stream
from BERT (test_zoo_contract checks the shared shapes, save/load and BERT initialisation)."""

from __future__ import annotations

import pytest
import torch
from pretrained import minilm_checkpoint
from transformers import BertConfig, BertModel
from zoo_inputs import INPUTS, SIZES, context, raw_batch, train_on

from kbench.baselines.vilbert import ViLBertCollator, ViLBertConfig, ViLBertForPreTraining, ViLBertModel
from kbench.core.config import load_config
from kbench.core.errors import KbenchError
from kbench.engine.trial import model_options, resolved_options
from kbench.features.codebook import fit_codebook

B, T, K, D, WORDS = 6, 12, 16, 24, 8
BOOK = fit_codebook((torch.rand(400, D, generator=torch.Generator().manual_seed(5)) * 3).numpy(), WORDS)


def tiny_model(**options) -> ViLBertForPreTraining:
    torch.manual_seed(0)
    config = ViLBertConfig(
        vocab_size=200, visual_feature_size=D, patch_scheme="grid-4", visual_words=WORDS, **SIZES, **options
    )
    return ViLBertForPreTraining(config)


def collated(model: ViLBertForPreTraining, seed: int = 0) -> dict[str, torch.Tensor]:
    return ViLBertCollator(model.config, 3, BOOK)(raw_batch(seed), torch.Generator().manual_seed(1))


def test_config_bounds_the_co_attention_layers() -> None:
    assert ViLBertConfig(**SIZES).co_attention_layers == 1
    assert ViLBertConfig(**SIZES, co_attention_layers=2).co_attention_layers == 2
    for bad in (0, 3):
        with pytest.raises(KbenchError, match="co_attention_layers must be between 1 and num_hidden_layers"):
            ViLBertConfig(**SIZES, co_attention_layers=bad)


def test_the_paper_profile_runs_vilberts_six_co_attention_layers() -> None:
    """ViLBERT's base model joins the streams by 6 Co-TRM layers under the last 6 of its 12 text layers, each
    followed by a visual TRM layer; the paper profile builds that. The CPU profiles' 2-layer BERT keeps 1, the
    same half of its text layers."""
    paper = model_options(load_config("paper"), "vilbert")
    assert paper["co_attention_layers"] == 6 and paper["num_hidden_layers"] == 12
    model = ViLBertModel(ViLBertConfig(**{**paper, **SIZES, "num_hidden_layers": 12}))
    assert len(model.encoder.layer) == 12 and len(model.co_attention) == 6 and len(model.image_layers) == 6
    for profile in ("default", "smoke"):
        options = resolved_options(load_config(profile), "vilbert")
        assert (options["co_attention_layers"], options["num_hidden_layers"]) == (1, 2), profile


def test_collator_corrupts_every_pair_and_scores_matched_ones() -> None:
    model = tiny_model()
    raw = raw_batch()
    batch = ViLBertCollator(model.config, 3, BOOK)(dict(raw), torch.Generator().manual_seed(1))
    assert set(batch) == {*INPUTS, "itm_labels", "mlm_labels", "region_mask", "region_targets"}
    matched = batch["itm_labels"].bool()
    # corruption must not reveal the alignment label: every pair has masked tokens and zeroed patches
    assert (batch["input_ids"] != raw["input_ids"]).any(dim=1).all()
    zeroed = (batch["patch_features"] == 0).all(dim=-1)
    assert zeroed.any(dim=1).all()
    # the masked word and region losses are taken on matched pairs only
    labelled = batch["mlm_labels"] != -100
    assert labelled[matched].any(dim=1).all() and not labelled[~matched].any()
    assert not labelled[:, 0].any() and not labelled[:, T - 4 :].any(), "never [CLS], [SEP] or padding"
    assert torch.equal(batch["mlm_labels"][labelled], raw["input_ids"][labelled])
    region = batch["region_mask"]
    assert region[matched].any(dim=1).all() and not region[~matched].any()
    assert not (zeroed[matched] & ~region[matched]).any(), "every zeroed patch of a matched pair is a target"
    assert torch.equal(batch["patch_features"][~zeroed], raw["patch_features"][~zeroed])
    # targets: the codebook's soft assignment of the original (unmasked) features
    targets = batch["region_targets"]
    assert targets.shape == (B, K, WORDS)
    torch.testing.assert_close(targets, BOOK.distribution(raw["patch_features"]))
    torch.testing.assert_close(targets.sum(-1), torch.ones(B, K))
    assert torch.equal(targets[region].argmax(-1), BOOK.assign(raw["patch_features"][region]))


def test_masked_shares_match_the_configuration() -> None:
    config = ViLBertConfig(vocab_size=200, visual_feature_size=D, visual_words=WORDS, **SIZES)
    raw = raw_batch(seed=2, rows=300, text_len=40, patches=64)
    raw["itm_labels"] = torch.ones(300, dtype=torch.long)
    candidates = raw["word_ids"] >= 0
    batch = ViLBertCollator(config, 3, BOOK)(dict(raw), torch.Generator().manual_seed(3))
    word_share = (batch["mlm_labels"] != -100).sum() / candidates.sum()
    region_share = batch["region_mask"].float().mean()
    zeroed = (batch["patch_features"] == 0).all(dim=-1)
    zeroed_share = zeroed.sum() / batch["region_mask"].sum()
    assert abs(word_share - 0.15) < 0.01 and abs(region_share - 0.15) < 0.01
    assert abs(zeroed_share - 0.9) < 0.03  # ViLBERT leaves 10 % of the masked regions unaltered


def test_two_streams_and_their_joint_representation() -> None:
    model = tiny_model().eval()
    batch = collated(model)
    inputs = {k: batch[k] for k in INPUTS}
    bare = model.vl(**inputs)
    assert bare.text_hidden_state.shape == (B, T, 32) and bare.image_hidden_state.shape == (B, K + 1, 32)
    pooled = model.pooled_output(**inputs)
    # the joint representation is the product of the pooled [CLS] and [IMG]
    torch.testing.assert_close(
        pooled, model.vl.pooler(bare.text_hidden_state) * model.vl.image_pooler(bare.image_hidden_state)
    )
    torch.testing.assert_close(model.itm_logits(**inputs), model.itm_head(pooled))
    where = torch.zeros(B, T, dtype=torch.bool)
    where[:, 2] = True
    torch.testing.assert_close(model.mlm_logits(where=where, **inputs), model.mlm_logits(**inputs)[:, 2])


def test_streams_meet_only_through_co_attention_and_ignore_text_padding() -> None:
    model = tiny_model(co_attention_layers=2).eval()
    inputs = {k: v for k, v in raw_batch().items() if k in INPUTS}
    base = model.vl(**inputs)
    other_image = {**inputs, "patch_features": inputs["patch_features"].flip(0)}
    assert not torch.allclose(model.vl(**other_image).text_hidden_state, base.text_hidden_state)
    padded = inputs["attention_mask"] == 0
    other_padding = {**inputs, "input_ids": inputs["input_ids"].masked_fill(padded, 7)}
    moved = model.vl(**other_padding)
    torch.testing.assert_close(moved.image_hidden_state, base.image_hidden_state)
    torch.testing.assert_close(moved.pooler_output, base.pooler_output)
    # the [IMG] token sees the mean patch: permuting the patches changes the patch states, not [IMG]'s
    order = torch.randperm(K, generator=torch.Generator().manual_seed(0))
    permuted = {
        **inputs,
        "patch_features": inputs["patch_features"][:, order],
        "patch_locations": inputs["patch_locations"][:, order],
    }
    shuffled = model.vl(**permuted)
    torch.testing.assert_close(shuffled.image_hidden_state[:, 0], base.image_hidden_state[:, 0])
    torch.testing.assert_close(shuffled.image_hidden_state[:, 1:], base.image_hidden_state[:, 1:][:, order])


def test_masked_region_loss_is_the_kl_to_the_visual_word_distribution() -> None:
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 32, generator=g, requires_grad=True)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    targets = torch.softmax(torch.randn(2, 5, WORDS, generator=g) * 3, -1)
    loss, acc = model.masked_region_loss(hidden, mask, targets)
    p, q = targets[mask], torch.softmax(model.region_head(hidden[mask]), -1)
    torch.testing.assert_close(loss, (p * (p / q).log()).sum() / 4)
    assert acc == (q.argmax(-1) == p.argmax(-1)).float().mean()
    zero, _ = model.masked_region_loss(hidden, torch.zeros_like(mask), targets)
    assert zero == 0 and zero.requires_grad


def test_every_loss_decreases_on_a_tiny_batch() -> None:
    model = tiny_model()
    batch = collated(model)
    first, last = train_on(model, batch)
    for name in first:
        assert last[name] < 0.7 * first[name], f"{name}: {first[name]:.4f} -> {last[name]:.4f}"


def test_pretraining_collator_uses_the_trials_codebook() -> None:
    model = tiny_model()
    trial = context(103, {f"codebook-{WORDS}": BOOK})
    collate = ViLBertForPreTraining.pretraining_collator(model.config, trial)
    assert isinstance(collate, ViLBertCollator) and collate.codebook is BOOK and collate.mask_token_id == 103
    assert set(trial.cache) == {f"codebook-{WORDS}"}


def test_a_shallower_text_stream_takes_berts_first_layers() -> None:
    bert = BertModel.from_pretrained(str(minilm_checkpoint()))
    assert bert.config.num_hidden_layers == 6
    arch = {k: getattr(bert.config, k) for k in ("hidden_size", "num_attention_heads", "intermediate_size")}
    model = ViLBertForPreTraining(
        ViLBertConfig(vocab_size=bert.config.vocab_size, visual_feature_size=D, num_hidden_layers=4, **arch)
    )
    model.load_bert_weights(bert)
    for i, layer in enumerate(model.vl.encoder.layer):  # the first four of BERT's six
        for name, tensor in bert.encoder.layer[i].state_dict().items():
            assert torch.equal(layer.state_dict()[name], tensor), f"layer {i} {name}"
    shallow = BertModel(BertConfig(vocab_size=200, **{**SIZES, "num_hidden_layers": 1}))
    with pytest.raises(ValueError):
        tiny_model().load_bert_weights(shallow)
