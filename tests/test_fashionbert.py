"""The FashionBERT-style zoo entry: objectives, the adaptive loss and collator invariants (test_zoo_contract checks
shapes, save/load and BERT initialisation)."""

from __future__ import annotations

import pytest
import torch
from zoo_inputs import SIZES, raw_batch, train_on

from kbench.baselines.fashionbert import FashionBertCollator, FashionBertConfig, FashionBertForPreTraining
from kbench.core.errors import KbenchError
from kbench.models.losses import adaptive_weights, feature_kl
from kbench.models.masking import apply_token_mask, choose_tokens
from kbench.models.zoo import MODELS, build_model, check_options

B, T, K, D = 6, 12, 16, 24


def tiny_model(**options) -> FashionBertForPreTraining:
    torch.manual_seed(0)
    return build_model(
        "fashionbert", None, vocab_size=200, visual_feature_size=D, patch_scheme="grid-4", **SIZES, **options
    )


def test_registered_with_options() -> None:
    assert MODELS.get("fashionbert") is FashionBertForPreTraining
    check_options("fashionbert", {"adaptive_loss": True, "hidden_size": 8})
    with pytest.raises(KbenchError, match="has no option 'adaptive'; did you mean adaptive_loss"):
        check_options("fashionbert", {"adaptive": True})


def test_collator_corrupts_every_pair_and_scores_matched_ones() -> None:
    model = tiny_model()
    raw = raw_batch()
    batch = FashionBertCollator(model.config, mask_token_id=3)(dict(raw), torch.Generator().manual_seed(1))
    matched = batch["itm_labels"].bool()
    # corruption must not reveal the ITM label: every pair, matched or not, has masked tokens and patches
    assert (batch["input_ids"] != raw["input_ids"]).any(dim=1).all()
    zeroed = (batch["patch_features"] == 0).all(dim=-1)
    assert zeroed.any(dim=1).all()
    # the losses are taken on matched pairs only
    labelled = batch["mlm_labels"] != -100
    assert labelled[matched].any(dim=1).all() and not labelled[~matched].any()
    assert torch.equal(batch["patch_mask"], zeroed & matched[:, None])
    assert not labelled[:, 0].any() and not labelled[:, 8:].any(), "never [CLS], [SEP] or padding"
    kept = ~zeroed
    assert torch.equal(batch["patch_features"][kept], batch["patch_targets"][kept])


def test_token_masking_is_80_10_10() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (400, 50), generator=g)
    chosen = choose_tokens(torch.ones_like(ids, dtype=torch.bool), 0.15, g)
    corrupted, labels = apply_token_mask(ids, chosen, mask_token_id=3, vocab_size=1000, generator=g)
    n = chosen.sum().item()
    assert abs(n / ids.numel() - 0.15) < 0.01
    assert torch.equal(labels[chosen], ids[chosen]) and (labels[~chosen] == -100).all()
    assert torch.equal(corrupted[~chosen], ids[~chosen])
    masked = (corrupted[chosen] == 3).float().mean().item()
    kept = (corrupted[chosen] == ids[chosen]).float().mean().item()
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02  # random tokens make up the rest


def test_every_loss_decreases_on_a_tiny_batch() -> None:
    model = tiny_model()
    batch = FashionBertCollator(model.config, 3)(raw_batch(), torch.Generator().manual_seed(1))
    first, last = train_on(model, batch)
    for name in first:
        assert last[name] < 0.7 * first[name], f"{name}: {first[name]:.4f} -> {last[name]:.4f}"


def test_adaptive_loss_weights() -> None:
    losses = torch.tensor([2.0, 0.7, 0.1])
    w = adaptive_weights(losses)
    g = torch.softmax(losses, 0) ** 2
    k = 3.0
    expected = torch.stack([(k - g[1]) * (k - g[2]), (k - g[2]) * (k - g[0]), (k - g[0]) * (k - g[1])])
    torch.testing.assert_close(w, expected / expected.sum())
    assert abs(w.sum().item() - 1) < 1e-6 and w.argmax() == 0  # the largest loss gets the largest weight


def test_adaptive_loss_is_on_by_default_and_reweights_the_objectives() -> None:
    """The paper's FashionBERT row used the adaptive loss: it is the default, and its weights are not the plain
    sum's."""
    assert FashionBertConfig().adaptive_loss is True
    model = tiny_model()
    out = model(**FashionBertCollator(model.config, 3)(raw_batch(), torch.Generator().manual_seed(1)))
    losses = torch.stack([out.losses[k] for k in ("mlm_loss", "itm_loss", "mpfc_loss")])
    weights = adaptive_weights(losses)
    torch.testing.assert_close(out.loss, (weights * losses).sum())
    assert (weights - 1 / 3).abs().max() > 1e-3 and (out.loss - losses.sum()).abs() > 1e-3
    plain = tiny_model(adaptive_loss=False)
    out = plain(**FashionBertCollator(plain.config, 3)(raw_batch(), torch.Generator().manual_seed(1)))
    torch.testing.assert_close(out.loss, sum(out.losses.values()))


def test_feature_kl_matches_the_direct_formula() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(5, 7, generator=g), torch.rand(5, 7, generator=g) * 4
    p, q = torch.softmax(target, -1), torch.softmax(pred, -1)
    direct = sum(sum(p[i, j] * torch.log(p[i, j] / q[i, j]) for j in range(7)) for i in range(5)) / 5
    torch.testing.assert_close(feature_kl(pred, target), direct)
    assert feature_kl(target, target).abs() < 1e-6
