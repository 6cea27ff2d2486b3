"""The ImageBERT zoo entry: shapes, objectives, collator invariants, save/load, BERT initialisation."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from transformers import BertModel
from zoo_inputs import INPUTS, SIZES, context, raw_batch, train_on

from baselines.imagebert import ImageBertCollator, ImageBertConfig, ImageBertForPreTraining
from kbench.data.text import bundled_checkpoint
from kbench.features.codebook import Codebook, fit_codebook
from kbench.models.zoo import ARCHITECTURE_KEYS, option_names

B, T, K, D, WORDS = 6, 12, 16, 24, 8


def tiny_model(**options) -> ImageBertForPreTraining:
    torch.manual_seed(0)
    config = ImageBertConfig(
        vocab_size=200, visual_feature_size=D, patch_scheme="grid-4", visual_words=WORDS, **SIZES, **options
    )
    return ImageBertForPreTraining(config)


@cache
def book() -> Codebook:
    return fit_codebook(raw_batch()["patch_features"].reshape(-1, D).numpy(), WORDS)


def collate(model: ImageBertForPreTraining, raw: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    return ImageBertCollator(model.config, 3, book())(dict(raw), torch.Generator().manual_seed(seed))


def expected_share(p: float, n: int) -> float:
    """The share ``choose_tokens`` picks among ``n`` candidates: ``p``, plus one forced pick when none was drawn."""
    return p + (1 - p) ** n / n


def test_config_options() -> None:
    assert {"visual_words", "patch_mask_probability", "mlm_probability", "visual_feature_size"} <= set(
        option_names(ImageBertForPreTraining)
    )
    config = ImageBertConfig()
    assert (config.patch_scheme, config.visual_words, config.patch_mask_probability) == ("grid-8", 64, 0.15)


def test_pretraining_collator_uses_the_trials_codebook() -> None:
    codebook = book()
    collator = ImageBertForPreTraining.pretraining_collator(
        tiny_model().config, context(7, {f"codebook-{WORDS}": codebook})
    )
    assert collator.codebook is codebook and collator.mask_token_id == 7


def test_collator_corrupts_every_pair_and_scores_matched_ones() -> None:
    model = tiny_model()
    raw = raw_batch()
    batch = collate(model, raw)
    matched = raw["itm_labels"].bool()
    assert set(batch) == set(INPUTS) | {"mlm_labels", "itm_labels", "patch_labels", "patch_targets"}
    # corruption must not reveal the ITM label: every pair, matched or not, has masked tokens and patches
    assert (batch["input_ids"] != raw["input_ids"]).any(dim=1).all()
    zeroed = (batch["patch_features"] == 0).all(dim=-1)
    assert zeroed.any(dim=1).all()
    labelled = batch["mlm_labels"] != -100
    assert labelled[matched].any(dim=1).all() and not labelled[~matched].any()
    assert not labelled[:, 0].any() and not labelled[:, 8:].any(), "never [CLS], [SEP] or padding"
    assert torch.equal(batch["mlm_labels"][labelled], raw["input_ids"][labelled])
    # MOC and MRFR score exactly the zeroed patches of matched pairs, against the original features
    assert torch.equal(batch["patch_labels"] != -100, zeroed & matched[:, None])
    scored = batch["patch_labels"] != -100
    assert torch.equal(batch["patch_labels"][scored], book().assign(raw["patch_features"])[scored])
    assert torch.equal(batch["patch_targets"], raw["patch_features"])
    assert torch.equal(batch["patch_features"][~zeroed], raw["patch_features"][~zeroed])


def test_masked_shares_follow_the_config() -> None:
    model = tiny_model(mlm_probability=0.2, patch_mask_probability=0.3)
    raw = raw_batch(rows=3000)
    batch = collate(model, raw)
    words = raw["word_ids"] >= 0
    masked = batch["input_ids"] != raw["input_ids"]  # 90 % of the chosen words change (80 % [MASK], 10 % random)
    assert abs(masked.sum() / words.sum() - 0.9 * expected_share(0.2, int(words[0].sum()))) < 0.01
    zeroed = (batch["patch_features"] == 0).all(dim=-1)
    assert abs(zeroed.float().mean() - expected_share(0.3, K)) < 0.01


def test_forward_shapes_and_losses() -> None:
    model = tiny_model()
    batch = collate(model, raw_batch())
    out = model(**batch)
    assert set(out.losses) == {"mlm_loss", "itm_loss", "moc_loss", "mrfr_loss"}
    assert set(out.accuracies) == {"mlm_acc", "itm_acc", "moc_acc"}
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert torch.allclose(out.loss, sum(out.losses.values()))
    inputs = {k: batch[k] for k in INPUTS}
    assert model.itm_logits(**inputs).shape == (B, 2)
    assert model.pooled_output(**inputs).shape == (B, 32)
    assert model.mlm_logits(**inputs).shape == (B, T, 200)
    where = torch.zeros(B, T, dtype=torch.bool)
    where[:, 2] = True
    assert model.mlm_logits(where=where, **inputs).shape == (B, 200)


def test_region_losses_are_taken_at_the_scored_patches() -> None:
    model = tiny_model().eval()
    batch = collate(model, raw_batch())
    out = model(**batch)
    hidden = model.vl(*(batch[k] for k in INPUTS)).last_hidden_state[:, T:]
    scored = batch["patch_labels"] != -100
    predicted = model.feature_head(hidden[scored])
    torch.testing.assert_close(out.losses["mrfr_loss"], (predicted - batch["patch_targets"][scored]).pow(2).mean())
    logits = model.region_head(hidden[scored])
    expected = -logits.log_softmax(-1).gather(1, batch["patch_labels"][scored][:, None]).mean()
    torch.testing.assert_close(out.losses["moc_loss"], expected)
    unscored = model(**dict(batch, patch_labels=torch.full_like(batch["patch_labels"], -100))).losses
    assert unscored["moc_loss"] == 0 and unscored["mrfr_loss"] == 0


def test_every_loss_decreases_on_a_tiny_batch() -> None:
    model = tiny_model()
    batch = collate(model, raw_batch())
    first, last = train_on(model, batch)
    for name in first:
        assert last[name] < 0.7 * first[name], f"{name}: {first[name]:.4f} -> {last[name]:.4f}"


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = tiny_model().eval()
    model.save_pretrained(tmp_path)
    loaded = ImageBertForPreTraining.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.config, ImageBertConfig) and loaded.config.model_type == "kbench-imagebert"
    assert loaded.config.visual_words == WORDS
    inputs = {k: v for k, v in raw_batch().items() if k in INPUTS}
    torch.testing.assert_close(loaded.itm_logits(**inputs), model.itm_logits(**inputs))
    torch.testing.assert_close(loaded.mlm_logits(**inputs), model.mlm_logits(**inputs))
    assert loaded.mlm_head.predictions.decoder.weight is loaded.vl.embeddings.word_embeddings.weight


def test_initialised_from_the_bundled_bert_checkpoint() -> None:
    bert = BertModel.from_pretrained(str(bundled_checkpoint())).eval()
    arch = {k: getattr(bert.config, k) for k in ARCHITECTURE_KEYS}
    model = ImageBertForPreTraining(ImageBertConfig(visual_feature_size=D, **arch)).eval()
    model.load_bert_weights(bert)
    for name, tensor in bert.state_dict().items():
        assert torch.equal(model.vl.state_dict()[name], tensor), name
    assert model.mlm_head.predictions.decoder.weight is model.vl.embeddings.word_embeddings.weight
    ids = raw_batch()["input_ids"]
    torch.testing.assert_close(model.vl.embeddings(input_ids=ids), bert.embeddings(input_ids=ids))
