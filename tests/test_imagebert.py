"""The ImageBERT zoo entry: objectives and collator invariants (test_zoo_contract checks shapes, save/load and BERT
initialisation)."""

from __future__ import annotations

from functools import cache

import torch
from zoo_inputs import INPUTS, SIZES, context, raw_batch, train_on

from kbench.baselines.imagebert import ImageBertCollator, ImageBertConfig, ImageBertForPreTraining
from kbench.features.codebook import Codebook, fit_codebook
from kbench.models.zoo import option_names

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
