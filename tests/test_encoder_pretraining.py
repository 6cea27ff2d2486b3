"""The small CNN's pre-training: its crops show garment, its labels name the product, a short run trains."""

from __future__ import annotations

import numpy as np
import torch

from kbench.data.synth import CATALOGUE, PATTERNS
from kbench.data.synth_render import PALETTE
from kbench.features.encoder_pretraining import (
    MIN_GARMENT_SHARE,
    crop_boxes,
    garment_share,
    pretrain_small_cnn,
    training_images,
)


def test_garment_share_by_hand() -> None:
    cells = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]])
    np.testing.assert_allclose(garment_share(cells, np.array([0, 0, 10, 10])), [1.0, 0.25, 0.0])


def test_training_images_and_crops() -> None:
    images, garments, labels = training_images(products=12, seed=1)
    assert images.shape == (12, 256, 256, 3) and images.dtype == np.uint8
    assert labels.shape == (12, 3)
    assert (
        labels[:, 0].max() < len(CATALOGUE)
        and labels[:, 1].max() < len(PALETTE)
        and labels[:, 2].max() < len(PATTERNS)
    )
    cells = crop_boxes(garments[0], 256)
    assert len(cells) == 2 * (55 + 64)
    share = garment_share(cells, garments[0])
    assert (share >= MIN_GARMENT_SHARE).sum() > 20  # plenty of usable crops on every garment
    assert share.max() == 1.0  # the cells of the garment box itself


def test_a_short_run_trains_and_standardises() -> None:
    encoder = pretrain_small_cnn(products=16, steps=4, batch_size=8)
    assert not encoder.training
    out = encoder(torch.randn(5, 3, 32, 32))
    assert out.shape == (5, 128) and torch.isfinite(out).all()
    assert not torch.allclose(encoder.norm.running_mean, torch.zeros(128))
