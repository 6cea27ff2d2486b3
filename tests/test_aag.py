"""AAG: cell assignment by attention mass, the attention regulariser, scoring, and training on tiny SynthFashion."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from kbench.core.config import DataConfig, SynthConfig
from kbench.core.paths import cache_dir
from kbench.data.fashiongen import read_splits
from kbench.data.layout import IMAGE_KEY
from kbench.data.splits import Split
from kbench.data.synth import generate
from kbench.features.encoders import build_encoder
from kbench.models.kaleido.aag import (
    STOPWORDS,
    AlignmentConfig,
    Alignments,
    align,
    assign_cells,
    attention_loss,
    box_feature_maps,
    cell_overlap,
    grid_features,
    load_alignments,
    read_regions,
    score_alignments,
    words,
)

LEVELS = (3, 4, 5)


def brute_force_cell(n: int, size: int, i: int, j: int) -> int:
    """The n x n grid cell holding most of feature cell (i, j) of a size x size map, exactly; the first on ties."""

    def share(k: int, a: int) -> Fraction:  # length of [k/n, (k+1)/n] & [a/size, (a+1)/size]
        lo = max(Fraction(k, n), Fraction(a, size))
        hi = min(Fraction(k + 1, n), Fraction(a + 1, size))
        return max(hi - lo, Fraction(0))

    areas = [share(r, i) * share(c, j) for r in range(n) for c in range(n)]
    return areas.index(max(areas))


@pytest.mark.parametrize("size", [14, 7])
def test_all_attention_on_one_feature_cell_goes_to_the_cell_holding_most_of_it(size: int) -> None:
    one_hot = torch.eye(size * size)  # row k: all attention on feature cell k
    for n in LEVELS:
        overlap = cell_overlap(n, size, size)
        assert overlap.shape == (n * n, size * size)
        torch.testing.assert_close((one_hot @ overlap.T).sum(-1), torch.ones(size * size))
        expected = [brute_force_cell(n, size, k // size, k % size) for k in range(size * size)]
        assert assign_cells(one_hot, overlap).tolist() == expected


def test_feature_cells_land_in_the_expected_grid_cells() -> None:
    one_hot = torch.eye(14 * 14)[[0, 195, 7 * 14 + 2, 3]]  # feature cells (0, 0), (13, 13), (7, 2), (0, 3)
    assert assign_cells(one_hot, cell_overlap(3, 14, 14)).tolist() == [0, 8, 3, 0]
    assert assign_cells(one_hot, cell_overlap(5, 14, 14)).tolist() == [0, 24, 10, 1]
    assert assign_cells(one_hot, cell_overlap(4, 14, 14)).tolist() == [0, 15, 8, 0]  # (0, 3) is split evenly


def test_attention_mass_spread_over_cells() -> None:
    alpha = torch.zeros(4, 4)
    alpha[0, 0], alpha[3, 3], alpha[3, 2] = 0.2, 0.5, 0.3  # 4 x 4 map onto 2 x 2: cell 3 gets 0.8
    overlap = cell_overlap(2, 4, 4)
    torch.testing.assert_close(overlap @ alpha.flatten(), torch.tensor([0.2, 0.0, 0.0, 0.8]))
    assert assign_cells(alpha.flatten(), overlap).item() == 3


def test_attention_loss_matches_the_doubly_stochastic_formula() -> None:
    torch.manual_seed(0)
    alphas = torch.rand(2, 3, 4).softmax(-1)  # (B, T, L)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the second caption has two steps
    expected = 0.0
    for b in range(2):
        steps = int(mask[b].sum())
        expected += sum((1 - sum(alphas[b, t, i].item() for t in range(steps))) ** 2 for i in range(4))
    assert attention_loss(alphas, mask, 0.5).item() == pytest.approx(0.5 * expected / 2, rel=1e-6)


def test_score_alignments_on_a_hand_made_example() -> None:
    boxes = np.array([[0, 0, 90, 90], [0, 0, 90, 90]])
    regions = [
        [
            {"attribute": "garment", "words": ["shirt"], "box": [0, 0, 90, 90]},
            {"attribute": "pocket", "words": ["patch", "pocket"], "box": [0, 0, 30, 30]},
            {"attribute": "logo", "words": ["logo"], "box": [60, 60, 75, 75]},
        ],
        [{"attribute": "collar", "words": ["collar"], "box": [30, 0, 60, 20]}],
    ]
    # level 3: 30-pixel cells; the logo box is 15 x 15 (225) inside cell 8; the collar covers 600 of cell 1's 900
    pairs = [
        [("shirt", 3, 4), ("pocket", 3, 0), ("patch", 3, 4), ("logo", 3, 7), ("tonal", 3, 0)],
        [("collar", 3, 1)],
    ]
    scores = score_alignments(Alignments(pairs, []), boxes, regions, (3,))
    assert scores["precision_l3"] == pytest.approx(3 / 5)  # shirt, pocket, collar right; patch, logo wrong
    assert scores["recall_l3"] == pytest.approx(3 / 4)  # garment, pocket, collar found; logo missed
    assert scores["chance_l3"] == pytest.approx((1 + 1 / 9 + 1 / 9 + 1 / 9 + 1 / 9) / 5)
    assert scores["words_per_image"] == pytest.approx(3.0)  # five distinct words, then one


@pytest.fixture(scope="module")
def synth_train(tmp_path_factory: pytest.TempPathFactory) -> Split:
    """The training split of a tiny SynthFashion (two of its 40 products carved out for dev)."""
    root = tmp_path_factory.mktemp("synth-aag")
    generate(root, SynthConfig(products_train=40, products_test=5, max_poses=1))
    return read_splits(root, DataConfig(dataset="synth", data_dir=str(root)), "synth").train


def test_load_alignments_trains_aligns_and_caches(synth_train: Split) -> None:
    split = synth_train
    boxes = np.tile([0, 0, 256, 256], (len(split), 1))
    cfg = AlignmentConfig(epochs=8, batch_size=16, hidden_size=64, embed_size=32, attention_size=32, max_words=16)
    args = (split, boxes, "whole", LEVELS, "small-cnn", None, cfg, torch.device("cpu"), 0)
    alignments = load_alignments(*args)

    losses = [h["loss"] for h in alignments.history]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0]
    assert all(h["attention_loss"] >= 0 for h in alignments.history)
    assert len(alignments.pairs) == len(split)
    assert sum(map(len, alignments.pairs)) > 0
    for pairs, description in zip(alignments.pairs, split.meta["description"], strict=True):
        for word, level, cell in pairs:
            assert word in words(description) and word not in STOPWORDS
            assert level in LEVELS and 0 <= cell < level * level
        assert sorted({(w, n) for w, n, _ in pairs}) == sorted((w, n) for w, n, _ in pairs)  # one cell per level

    start = time.perf_counter()
    again = load_alignments(*args)
    assert time.perf_counter() - start < 2.0
    assert again == alignments
    # the same seed trains the same captioner: recomputing gives what the cache holds, however many loader
    # workers read the grid store ahead of it
    grids = grid_features(split, boxes, "small-cnn", build_encoder("small-cnn", None), cfg, torch.device("cpu"))
    assert align(split, grids, LEVELS, cfg, torch.device("cpu"), 0, workers=2) == alignments


def test_grid_features_stream_from_a_sharded_store_on_disk(synth_train: Split) -> None:
    """The captioner's features are read back from disk in batches, standardised by the statistics of the float32
    maps as extraction saw them; the store is kept in shards of whole batches."""
    split = synth_train
    boxes = np.tile([0, 0, 256, 256], (len(split), 1))
    cfg = AlignmentConfig(batch_size=4)
    encoder = build_encoder("small-cnn", None)
    grids = grid_features(split, boxes, "small-cnn", encoder, cfg, torch.device("cpu"))
    assert grids.store.root.parent == cache_dir("aag-grids") and grids.store.complete
    assert grids.store.shard_rows % cfg.batch_size == 0 and len(grids) == len(split)
    with h5py.File(split.path, "r") as f:
        maps = box_feature_maps(f[IMAGE_KEY], split.meta["row"].to_numpy(), boxes, encoder, cfg, torch.device("cpu"))
    centre = maps.double().mean((0, 1))
    scale = (maps.double().square().mean((0, 1)) - centre.square()).sqrt()
    positions = np.array([7, 0, 31, 7])
    expected = ((maps[positions].double() - centre) / scale).float()
    torch.testing.assert_close(grids.batch(positions).float(), expected, atol=2e-3, rtol=2e-3)  # float16 store
    assert grids.size == (14, 14) and grids.channels == 128


def test_read_regions_follows_the_split_rows(synth_train: Split) -> None:
    regions = read_regions(synth_train)
    assert regions is not None and len(regions) == len(synth_train)
    for entries, description in zip(regions, synth_train.meta["description"], strict=True):
        assert entries and {"attribute", "words", "box"} <= set(entries[0])
        assert all(set(e["words"]) <= set(words(description)) for e in entries)
    assert synth_train.meta["row"].tolist() != list(range(len(synth_train)))  # dev products were carved out
    assert read_regions(synth_train.subset(np.arange(len(synth_train))[::-1], "reversed")) == regions[::-1]


def test_read_regions_is_none_without_ground_truth(tiny_fashiongen: Path) -> None:
    splits = read_splits(tiny_fashiongen, DataConfig(dataset="fashiongen", data_dir=str(tiny_fashiongen)), "tiny")
    assert read_regions(splits.train) is None
    assert read_regions(splits.test) is None
