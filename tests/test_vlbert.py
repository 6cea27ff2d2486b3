"""The VL-BERT zoo entry: objectives, collator invariants, the visual embedding of the words (test_zoo_contract
checks shapes, save/load and BERT initialisation)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pretrained import minilm_checkpoint
from transformers import BertModel
from zoo_inputs import INPUTS, SIZES, context, raw_batch, train_on

from kbench.baselines.vlbert import VLBertCollator, VLBertConfig, VLBertForPreTraining
from kbench.core.config import load_config
from kbench.data.splits import Split
from kbench.data.text import load_tokenizer, tokenize
from kbench.engine.pretraining import epoch_steps, pretraining_batches
from kbench.features.batches import ModelData
from kbench.features.codebook import Codebook, fit_codebook
from kbench.features.patch_features import features_from_arrays
from kbench.models.zoo import ARCHITECTURE_KEYS, MODELS, option_names

B, T, K, D, WORDS = 6, 12, 16, 24, 8


def tiny_model(**options) -> VLBertForPreTraining:
    torch.manual_seed(0)
    config = VLBertConfig(
        vocab_size=200, visual_feature_size=D, patch_scheme="grid-4", visual_words=WORDS, **SIZES, **options
    )
    return VLBertForPreTraining(config)


@cache
def book() -> Codebook:
    return fit_codebook(raw_batch()["patch_features"].reshape(-1, D).numpy(), WORDS)


def collate(model: VLBertForPreTraining, raw: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    return VLBertCollator(model.config, 3, book())(dict(raw), torch.Generator().manual_seed(seed))


def test_config_options() -> None:
    assert {"visual_words", "patch_mask_probability", "mlm_probability", "visual_feature_size"} <= set(
        option_names(VLBertForPreTraining)
    )
    config = VLBertConfig()
    assert (config.patch_scheme, config.visual_words, config.patch_mask_probability) == ("grid-8", 64, 0.15)


def test_pretraining_collator_uses_the_trials_codebook() -> None:
    codebook = book()
    collator = VLBertForPreTraining.pretraining_collator(
        tiny_model().config, context(7, {f"codebook-{WORDS}": codebook})
    )
    assert collator.codebook is codebook and collator.mask_token_id == 7


def test_collator_corrupts_every_pair_and_scores_matched_ones() -> None:
    model = tiny_model()
    raw = raw_batch()
    batch = collate(model, raw)
    matched = raw["itm_labels"].bool()
    assert set(batch) == set(INPUTS) | {"mlm_labels", "patch_labels"}, "no ITM loss, so no itm_labels"
    # corruption must not reveal the ITM label: every pair, matched or not, has masked tokens and patches
    assert (batch["input_ids"] != raw["input_ids"]).any(dim=1).all()
    zeroed = (batch["patch_features"] == 0).all(dim=-1)
    assert zeroed.any(dim=1).all()
    labelled = batch["mlm_labels"] != -100
    assert labelled[matched].any(dim=1).all() and not labelled[~matched].any()
    assert not labelled[:, 0].any() and not labelled[:, 8:].any(), "never [CLS], [SEP] or padding"
    assert torch.equal(batch["mlm_labels"][labelled], raw["input_ids"][labelled])
    scored = batch["patch_labels"] != -100
    assert scored[matched].any(dim=1).all() and not scored[~matched].any()
    assert (scored | ~matched[:, None] | ~zeroed).all(), "every zeroed patch of a matched pair is scored"
    assert torch.equal(batch["patch_labels"][scored], book().assign(raw["patch_features"])[scored])
    kept = ~zeroed
    assert torch.equal(batch["patch_features"][kept], raw["patch_features"][kept])


def test_pre_training_draws_matched_pairs_only(tmp_path: Path) -> None:
    """VL-BERT (like CLIP) has no matching objective in pre-training, so its batches are matched pairs, all of them
    scored by both objectives, in an epoch of images and in one of pairs; an entry with ITM still gets negatives."""
    n = 10
    texts = [f"a garment number {i} in colour {i % 3}" for i in range(n)]
    meta = pd.DataFrame({"row": range(n), "product_id": range(n), "description": texts})
    features = torch.rand(n, K, D, generator=torch.Generator().manual_seed(0)).numpy()
    store = features_from_arrays(tmp_path, features, np.zeros((n, K, 5), np.float32), np.zeros((n, 4), np.int64))
    data = ModelData(
        Split("train", Path("unused.h5"), meta, "fp"), tokenize(load_tokenizer("bundled"), texts, 16), store
    )
    model = tiny_model()
    collator = VLBertCollator(model.config, 3, book())
    seen: list[dict[str, torch.Tensor]] = []

    def keep_and_collate(batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        seen.append({k: batch[k].clone() for k in ("image_positions", "text_positions", "itm_labels")})
        return collator(batch, generator)

    matched_only = {name for name in MODELS.names() if not MODELS.get(name).pretrains_on_mismatches}
    assert matched_only == {"vlbert", "clip"}, "the entries whose pre-training has no matching objective"
    for unit in ("images", "pairs"):
        cfg = load_config("smoke", [f"pretrain.epoch_unit={unit}", "pretrain.batch_size=5"]).pretrain
        make = pretraining_batches(
            data, keep_and_collate, cfg, 3, mismatches=VLBertForPreTraining.pretrains_on_mismatches
        )
        seen.clear()
        for step in range(epoch_steps(cfg, n)):
            batch = make(step)
            assert (batch["mlm_labels"] != -100).any(dim=1).all() and (batch["patch_labels"] != -100).any(dim=1).all()
        shown = torch.cat([b["image_positions"] for b in seen])
        assert all(torch.equal(b["text_positions"], b["image_positions"]) for b in seen)
        assert all((b["itm_labels"] == 1).all() for b in seen)
        assert sorted(shown.tolist()) == sorted(list(range(n)) * (2 if unit == "pairs" else 1))
    with_itm = pretraining_batches(data, lambda batch, generator: batch, cfg, 3)
    labels = torch.cat([with_itm(step)["itm_labels"] for step in range(epoch_steps(cfg, n))])
    assert (labels == 0).sum() == n, "an epoch of pairs gives an ITM entry each image once mismatched"


def expected_share(p: float, n: int) -> float:
    """The share ``choose_tokens`` picks among ``n`` candidates: ``p``, plus one forced pick when none was drawn."""
    return p + (1 - p) ** n / n


def test_masked_shares_follow_the_config() -> None:
    model = tiny_model()
    raw = raw_batch(rows=3000)
    batch = collate(model, raw)
    matched = raw["itm_labels"].bool()
    words = (raw["word_ids"] >= 0)[matched]
    labelled = (batch["mlm_labels"] != -100)[matched]
    assert abs(labelled.sum() / words.sum() - expected_share(0.15, int(words[0].sum()))) < 0.01
    scored = (batch["patch_labels"] != -100)[matched]
    assert abs(scored.float().mean() - expected_share(0.15, K)) < 0.01
    zeroed = (batch["patch_features"] == 0).all(dim=-1)[matched]
    assert abs(zeroed[scored].float().mean() - 0.9) < 0.03, "90 % of masked patches zeroed, 10 % unaltered"


def test_a_masked_patch_reaches_the_model_only_as_its_label() -> None:
    """Changing a zeroed patch's original feature changes no model input: the words' whole-image embedding is the
    mean of the corrupted features."""
    model = tiny_model()
    raw = raw_batch()
    batch = collate(model, raw)
    zeroed = (batch["patch_features"] == 0).all(dim=-1)
    changed = dict(raw, patch_features=raw["patch_features"].masked_fill(zeroed[..., None], 2.5))
    again = collate(model, changed)
    for key in INPUTS:
        assert torch.equal(again[key], batch[key]), key


def test_every_word_carries_the_whole_image_embedding() -> None:
    model = tiny_model().eval()
    bare = model.vl
    raw = raw_batch()
    ids, features, locations = raw["input_ids"], raw["patch_features"], raw["patch_locations"]
    # VL-BERT's zero gains: at initialisation the words embed as in BERT, whatever the image
    torch.testing.assert_close(bare.embed(ids, features, locations)[:, :T], bare.embeddings(input_ids=ids))
    with torch.no_grad():
        bare.patch_embeddings.text_visual_norm.weight.fill_(1.0)
    text = bare.embed(ids, features, locations)[:, :T]
    assert not torch.allclose(text, bare.embeddings(input_ids=ids), atol=1e-3)
    # the words of one pair depend on the image through the mean patch feature only
    shuffled = features[:, torch.randperm(K)]
    torch.testing.assert_close(bare.embed(ids, shuffled, locations)[:, :T], text)
    other = features.roll(1, dims=0)
    assert not torch.allclose(bare.embed(ids, other, locations)[:, :T], text, atol=1e-3)


def test_no_itm_loss_in_pretraining() -> None:
    model = tiny_model()
    model(**collate(model, raw_batch())).loss.backward()
    assert all(p.grad is None for p in model.itm_head.parameters()), "the ITM head is trained in fine-tuning only"
    assert model.region_head[1].weight.grad.abs().sum() > 0


def test_every_loss_decreases_on_a_tiny_batch() -> None:
    model = tiny_model()
    batch = collate(model, raw_batch())
    first, last = train_on(model, batch)
    for name in first:
        assert last[name] < 0.7 * first[name], f"{name}: {first[name]:.4f} -> {last[name]:.4f}"


def test_initialised_from_bert_the_words_embed_as_in_bert() -> None:
    """VL-BERT's zero gains keep a BERT checkpoint's word embeddings unchanged, whatever the image."""
    bert = BertModel.from_pretrained(str(minilm_checkpoint())).eval()
    arch = {k: getattr(bert.config, k) for k in ARCHITECTURE_KEYS}
    model = VLBertForPreTraining(VLBertConfig(visual_feature_size=D, **arch)).eval()
    model.load_bert_weights(bert)
    raw = raw_batch()
    words = model.vl.embed(raw["input_ids"], raw["patch_features"], raw["patch_locations"])[:, :T]
    torch.testing.assert_close(words, bert.embeddings(input_ids=raw["input_ids"]))
