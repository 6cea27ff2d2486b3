"""Patch geometry, and the feature store: batched extraction equals crop-by-crop encoding, cached once."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kbench.core.config import DataConfig, FeatureConfig, RuntimeConfig
from kbench.core.errors import KbenchError
from kbench.core.paths import cache_dir
from kbench.data.fashiongen import read_splits
from kbench.engine.launch import ray_temp_dir
from kbench.features import extraction
from kbench.features.encoders import ENCODERS, IMAGENET_MEAN, IMAGENET_STD, ResNet50, SmallCNN, build_encoder
from kbench.features.extraction import extract_with_ray, load_features
from kbench.features.patch_features import Patching, store_root
from kbench.features.patches import KALEIDO, get_scheme, locations
from kbench.features.store import ArraySpec, ShardedStore
from kbench.models.kaleido.kpg import kpg_patching


def test_kaleido_has_55_row_major_cells_with_integer_bounds() -> None:
    boxes = KALEIDO.boxes((0, 0, 256, 256))
    assert KALEIDO.num_patches == 55 and boxes.shape == (55, 4) and boxes.dtype == np.int64
    assert [s.stop - s.start for s in KALEIDO.level_slices()] == [1, 4, 9, 16, 25]
    np.testing.assert_array_equal(boxes[0], [0, 0, 256, 256])
    level3 = boxes[KALEIDO.level_slices()[2]]
    # row-major: x varies fastest; integer division: 256 // 3 = 85, 2*256 // 3 = 170
    np.testing.assert_array_equal(level3[:3], [[0, 0, 85, 85], [85, 0, 170, 85], [170, 0, 256, 85]])
    np.testing.assert_array_equal(level3[3], [0, 85, 85, 170])
    for level, n in zip(KALEIDO.level_slices(), KALEIDO.levels, strict=True):
        cells = boxes[level]
        area = ((cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])).sum()
        assert area == 256 * 256, f"level {n} cells must tile the box exactly"


def test_grid_on_an_offset_box() -> None:
    grid = get_scheme("grid-8")
    boxes = grid.boxes((10, 20, 110, 220))
    assert grid.num_patches == 64
    np.testing.assert_array_equal(boxes[0], [10, 20, 22, 45])  # 100 // 8 = 12, 200 // 8 = 25
    np.testing.assert_array_equal(boxes[-1], [97, 195, 110, 220])
    with pytest.raises(KbenchError, match="unknown patch scheme 'grid-x'"):
        get_scheme("grid-x")


def test_locations_are_normalised_to_the_image() -> None:
    loc = locations(np.array([[0, 0, 128, 64], [64, 128, 256, 256]]), width=256, height=256)
    np.testing.assert_allclose(loc[0], [0.0, 0.5, 0.0, 0.25, 0.125])
    np.testing.assert_allclose(loc[1], [0.25, 1.0, 0.5, 1.0, 0.375])
    assert loc.min() >= 0 and loc.max() <= 1


def test_small_cnn_loads_its_shipped_weights_and_standardises() -> None:
    x = torch.randn(64, 3, 32, 32)
    a, b = SmallCNN().eval(), SmallCNN().eval()
    torch.testing.assert_close(a(x), b(x))
    assert a(x).shape == (64, 128) and len(a.weights_id()) == 16
    untrained = SmallCNN(pretrained=False).eval()
    assert not torch.equal(untrained(x), a(x)) and untrained.weights_id() == "untrained"
    # the final BatchNorm holds the per-dimension statistics of the pre-training crops
    assert a.norm.running_var.min() > 0 and not torch.allclose(a.norm.running_mean, torch.zeros(128))
    with pytest.raises(KbenchError, match=r"small-cnn weights file .* does not exist"):
        SmallCNN(weights="/nonexistent.safetensors")


def test_resnet50_has_torchvision_names_and_loads_a_state_dict(tmp_path: Path) -> None:
    reference = ResNet50()
    names = set(reference.state_dict())
    assert {
        "conv1.weight",
        "bn1.running_mean",
        "layer4.2.conv3.weight",
        "layer1.0.downsample.1.weight",
        "fc.bias",
    } <= names
    assert sum(p.numel() for p in reference.parameters()) == 25_557_032  # torchvision's resnet50
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    loaded = ResNet50(str(path))
    torch.testing.assert_close(loaded.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(KbenchError, match="not a torchvision resnet50 state dict"):
        ResNet50(str(path))
    with pytest.raises(KbenchError, match=re.escape("needs features.weights")):
        build_encoder("resnet50", None)
    assert ENCODERS.names() == ["resnet50", "small-cnn"]


def test_store_matches_crop_by_crop_encoding_and_is_cached(tiny_fashiongen: Path) -> None:
    data = read_splits(tiny_fashiongen, DataConfig(dataset="fashiongen", data_dir=str(tiny_fashiongen)), "fashiongen")
    scheme, cfg = get_scheme("grid-4"), FeatureConfig(batch_size=5, shard_rows=7)
    feats = load_features(data.test, Patching(scheme), cfg, torch.device("cpu"))
    root = store_root(data.test, Patching(scheme), cfg, SmallCNN().weights_id())
    assert feats.store.root == root and feats.store.complete and len(feats) == len(data.test)
    assert feats.store.num_shards == -(-len(data.test) // 7) > 1, "the test reads across shards"
    stamp = (root / "shard-00000" / "patches.npy").stat().st_mtime_ns
    load_features(data.test, Patching(scheme), cfg, torch.device("cpu"))
    assert (root / "shard-00000" / "patches.npy").stat().st_mtime_ns == stamp, "a second load must reuse the store"

    encoder = SmallCNN().eval()
    positions = np.array([8, 0, 3, 8])  # out of order, repeated, in two shards
    image = torch.from_numpy(data.test.read_images(positions)).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = []
    for x1, y1, x2, y2 in scheme.boxes((0, 0, 256, 256)).tolist():
        crop = F.interpolate(image[:, :, y1:y2, x1:x2], size=(32, 32), mode="bilinear", antialias=True)
        expected.append(encoder((crop - mean) / std))
    got, locs = feats.batch(positions)
    assert got.dtype == torch.float16  # as stored: float32 only on the device
    torch.testing.assert_close(got.float(), torch.stack(expected, 1).half().float(), atol=1e-3, rtol=1e-3)
    assert locs.shape == (4, 16, 5) and feats.views == {}


def test_store_reads_any_rows_of_any_part_in_order(tmp_path: Path) -> None:
    """Batches are read straight from the shard files on disk, whatever the shard size: whole rows (coalesced into
    runs), parts of rows, repeated and unordered positions."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal((23, 6, 5)).astype(np.float16)
    store = ShardedStore.create(tmp_path / "s", 23, 4, {"x": ArraySpec((6, 5), "float16")}, {"what": "test"})
    assert store.missing() == list(range(6)) and not store.complete
    for shard in store.missing():
        span = store.shard_span(shard)
        with store.shard_writer(shard) as writer:
            for start in range(span.start, span.stop, 3):  # in batches that do not divide the shard
                writer.append({"x": values[start : min(start + 3, span.stop)]})
    assert store.complete and ShardedStore.open(tmp_path / "s").layout() == store.layout()
    for positions in ([0], [22, 3, 4, 5, 6, 7, 3, 0], rng.integers(0, 23, 50), np.arange(23)):
        np.testing.assert_array_equal(store.read("x", np.asarray(positions)), values[positions])
        np.testing.assert_array_equal(store.read("x", np.asarray(positions), slice(2, 5)), values[positions, 2:5])
    with pytest.raises(KbenchError, match="out of range"):
        store.read("x", np.array([23]))
    with pytest.raises(ValueError, match="shard incomplete"), store.shard_writer(0) as writer:
        writer.append({"x": values[:1]})
    assert not any(p.name.startswith(".shard") for p in (tmp_path / "s").iterdir()), "nothing half-written is left"


@pytest.mark.slow
def test_killed_extraction_resumes_to_the_uninterrupted_store(
    tiny_fashiongen: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kill -9`` in the middle of a shard: the rerun drops the half-written shard, keeps the committed ones and
    ends with the same bytes as an extraction that was never interrupted."""
    patching, cfg = (
        kpg_patching("kaleido+sod", "border-contrast", akpm_views=True),
        FeatureConfig(batch_size=2, shard_rows=4),
    )
    script = tmp_path / "extract.py"
    script.write_text(KILLED_EXTRACTION.format(data=str(tiny_fashiongen), marker=str(tmp_path / "stuck")))
    child = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "KBENCH_HOME": str(tmp_path / "a")})
    deadline = time.monotonic() + 120
    while not (tmp_path / "stuck").exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "stuck").exists(), "the extraction must have stopped inside its third shard"
    child.send_signal(signal.SIGKILL)
    child.wait()

    data = read_splits(tiny_fashiongen, DataConfig(dataset="fashiongen", data_dir=str(tiny_fashiongen)), "fashiongen")
    monkeypatch.setenv("KBENCH_HOME", str(tmp_path / "a"))
    root = store_root(data.train, patching, cfg, SmallCNN().weights_id())
    assert sorted(p.name for p in root.glob("shard-*")) == ["shard-00000", "shard-00001"]
    assert len(list(root.glob(".shard-00002.*"))) == 1, "the killed writer left its shard half-written"
    resumed = load_features(data.train, patching, cfg, torch.device("cpu")).store
    assert not list(root.glob(".shard-*"))
    monkeypatch.setenv("KBENCH_HOME", str(tmp_path / "b"))
    whole = load_features(data.train, patching, cfg, torch.device("cpu")).store
    assert resumed.num_shards == whole.num_shards > 3
    assert store_bytes(resumed) == store_bytes(whole)


KILLED_EXTRACTION = """
import os, time
import torch
from kbench.core.config import DataConfig, FeatureConfig
from kbench.data.fashiongen import read_splits
from kbench.features.extraction import load_features
from kbench.features.store import ShardWriter
from kbench.models.kaleido.kpg import kpg_patching

append, calls = ShardWriter.append, []
def stuck(self, batch):  # the fifth batch is the first of the third shard: stop inside it, after writing it
    append(self, batch)
    calls.append(1)
    if len(calls) == 5:
        open({marker!r}, "w").close()
        time.sleep(600)
ShardWriter.append = stuck
data = read_splits({data!r}, DataConfig(dataset="fashiongen", data_dir={data!r}), "fashiongen")
patching = kpg_patching("kaleido+sod", "border-contrast", akpm_views=True)
load_features(data.train, patching, FeatureConfig(batch_size=2, shard_rows=4), torch.device("cpu"))
"""


def store_bytes(store: ShardedStore) -> dict[str, bytes]:
    """Every file of a store's shards, by path inside the store."""
    return {str(p.relative_to(store.root)): p.read_bytes() for p in sorted(store.root.glob("shard-*/*.npy"))}


@pytest.mark.slow
def test_one_and_two_ray_workers_write_the_same_store(
    tiny_fashiongen: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shards extracted by Ray tasks, one or two at a time, equal those extracted in one process, byte for byte."""
    import ray

    data = read_splits(tiny_fashiongen, DataConfig(dataset="fashiongen", data_dir=str(tiny_fashiongen)), "fashiongen")
    patching = kpg_patching("kaleido+sod", "border-contrast", akpm_views=True)
    runtime = RuntimeConfig(device="cpu", cpus_per_trial=1)
    stores = {}
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, _temp_dir=ray_temp_dir())
    try:
        for workers in (1, 2):
            monkeypatch.setenv("KBENCH_HOME", str(tmp_path / f"ray-{workers}"))
            cfg = FeatureConfig(batch_size=3, shard_rows=5, workers=workers)
            extract_with_ray([(data.train, patching), (data.test, Patching(KALEIDO))], cfg, runtime)
            stores[workers] = load_features(data.train, patching, cfg, torch.device("cpu")).store
            assert load_features(data.test, Patching(KALEIDO), cfg, torch.device("cpu")).store.complete
    finally:
        ray.shutdown()
    monkeypatch.setenv("KBENCH_HOME", str(tmp_path / "in-process"))
    alone = load_features(data.train, patching, FeatureConfig(batch_size=3, shard_rows=5), torch.device("cpu")).store
    assert alone.num_shards > 2
    assert store_bytes(stores[1]) == store_bytes(stores[2]) == store_bytes(alone)


def crop_features(
    image: torch.Tensor, box: tuple[int, int, int, int], encoder: SmallCNN, grey: bool = False, k: int = 0
):
    """One crop encoded on its own: the reference the batched store must match."""
    x1, y1, x2, y2 = box
    crop = F.interpolate(image[:, :, y1:y2, x1:x2], size=(32, 32), mode="bilinear", antialias=True)
    if grey:
        crop = (crop * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).expand_as(crop)
    crop = torch.rot90(crop, k, dims=(-2, -1))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return encoder((crop - mean) / std)


def test_locked_kaleido_store_with_akpm_views(tiny_fashiongen: Path) -> None:
    data = read_splits(tiny_fashiongen, DataConfig(dataset="fashiongen", data_dir=str(tiny_fashiongen)), "fashiongen")
    patching = kpg_patching("kaleido+sod", "border-contrast", akpm_views=True)
    feats = load_features(data.test, patching, FeatureConfig(batch_size=4), torch.device("cpu"))
    assert set(feats.views) == {"rotated", "grey"} and "locked" in feats.name
    positions = np.array([2, 5])
    boxes = feats.example_boxes(positions)
    assert boxes.shape == (2, 4)
    got, locs = feats.batch(positions)
    encoder = SmallCNN().eval()
    for i, pos in enumerate(positions):
        raw = torch.from_numpy(data.test.read_images(np.array([pos]))).permute(0, 3, 1, 2).float() / 255
        x1, y1, x2, y2 = boxes[i].tolist()
        locked = F.interpolate(raw[:, :, y1:y2, x1:x2], size=(256, 256), mode="bilinear", antialias=True)
        cells = KALEIDO.boxes((0, 0, 256, 256))
        whole = crop_features(locked, tuple(cells[0]), encoder)
        torch.testing.assert_close(got[i, 0].float(), whole[0].half().float(), atol=2e-3, rtol=2e-3)
        for k in (1, 2, 3):
            rotated = crop_features(locked, tuple(cells[0]), encoder, k=k)
            torch.testing.assert_close(
                feats.view("rotated", positions)[i, k - 1].float(), rotated[0].half().float(), atol=2e-3, rtol=2e-3
            )
        level4 = KALEIDO.level_slices()[3]
        grey = crop_features(locked, tuple(cells[level4][5]), encoder, grey=True)
        torch.testing.assert_close(
            feats.view("grey", positions)[i, 5].float(), grey[0].half().float(), atol=2e-3, rtol=2e-3
        )
        # locations are those of the cells of the locked box, in image coordinates
        expected = locations(KALEIDO.boxes(tuple(boxes[i])), 256, 256)
        np.testing.assert_allclose(locs[i].numpy(), expected, rtol=1e-6)
    with pytest.raises(KbenchError, match="has no 'nope' view"):
        feats.view("nope", positions)


def test_stores_of_the_old_format_are_named_and_never_read(
    tiny_fashiongen: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache from before sharded stores holds one HDF5 file per data file: it is left alone, said once, and the
    features are extracted again."""
    monkeypatch.setenv("KBENCH_HOME", str(tmp_path))
    monkeypatch.setattr(extraction, "_warned_old_format", False)
    data = read_splits(tiny_fashiongen, DataConfig(dataset="fashiongen", data_dir=str(tiny_fashiongen)), "fashiongen")
    old = cache_dir("features") / "fashiongen_256_256_validation-grid-4-small-cnn-0123456789abcdef.h5"
    old.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(1000))
    with caplog.at_level(logging.WARNING, logger="kbench.features.extraction"):
        feats = load_features(data.test, Patching(get_scheme("grid-4")), FeatureConfig(), torch.device("cpu"))
    assert "1 feature stores of an older kbench" in caplog.text and "are no longer read" in caplog.text
    assert feats.store.complete and old.read_bytes()[:4] == b"\x89HDF"
