"""Content-addressed inputs and verified caches: a fingerprint that sees every image, and stores, checkpoints and
candidate lists whose damaged bytes are rebuilt, restored or refused, never used; ``kbench cache verify|clear``."""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kbench.commands.cli import main
from kbench.core.config import DataConfig, FeatureConfig, load_config
from kbench.core.errors import KbenchError
from kbench.core.paths import cache_dir
from kbench.data.fashiongen import read_splits
from kbench.data.layout import IMAGE_KEY, TEST_FILE, TRAIN_FILE
from kbench.data.splits import DatasetSplits
from kbench.engine.pretrained import pretrained_model
from kbench.engine.trial import Trial, TrialSpec
from kbench.features.encoders import SmallCNN
from kbench.features.extraction import load_features
from kbench.features.patch_features import PATCHES, PatchFeatures, Patching, store_root
from kbench.features.patches import get_scheme
from kbench.features.store import ShardedStore
from kbench.models.train_state import TrainState
from kbench.tasks.protocols import CandidateLists, FashionBert101

CPU = torch.device("cpu")
FEATURES = FeatureConfig(batch_size=5, shard_rows=7)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A KBENCH_HOME of the test's own, so that damaging its caches touches no other test."""
    path = tmp_path / "home"
    monkeypatch.setenv("KBENCH_HOME", str(path))
    return path


@pytest.fixture
def data_copy(tiny_fashiongen: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(tiny_fashiongen, copy)
    return copy


def read(data_dir: Path) -> DatasetSplits:
    return read_splits(data_dir, DataConfig(dataset="fashiongen", data_dir=str(data_dir)), "fashiongen")


def zero_bytes(path: Path, start: int, stop: int | None = None) -> None:
    """Overwrite bytes ``start:stop`` of ``path`` with zeros in place (its size kept)."""
    stop = path.stat().st_size if stop is None else stop
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(bytes(stop - start))


def truncate(path: Path, fraction: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * fraction))


# --- the data fingerprint -----------------------------------------------------------------------------------------


def test_blanking_images_outside_any_sample_changes_the_fingerprint(home: Path, data_copy: Path) -> None:
    first = read(data_copy)
    with h5py.File(data_copy / TRAIN_FILE, "r+") as f:
        images = f[IMAGE_KEY]
        n = images.shape[0]
        sample = set(np.linspace(0, n - 1, num=min(n, 16)).astype(int).tolist())  # the rows the old one hashed
        for row in sorted(set(range(n)) - sample):
            images[row] = 0
    blanked = read(data_copy)
    assert blanked.train.file_fingerprint != first.train.file_fingerprint
    assert blanked.fingerprint != first.fingerprint
    assert blanked.test.file_fingerprint == first.test.file_fingerprint


def test_each_version_of_a_file_is_hashed_once_and_named(
    home: Path, data_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kbench.data.fashiongen"):
        first = read(data_copy)
    hashed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fingerprinting")]
    assert len(hashed) == 2 and str((data_copy / TRAIN_FILE).resolve()) in hashed[0], hashed
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kbench.data.fashiongen"):
        assert read(data_copy).fingerprint == first.fingerprint
    assert "fingerprinting" not in caplog.text, "an unchanged file is hashed once"
    with h5py.File(data_copy / TEST_FILE, "r+") as f:
        f[IMAGE_KEY][1, 0, 0, 0] ^= 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kbench.data.fashiongen"):
        changed = read(data_copy)
    assert caplog.text.count("fingerprinting") == 1 and str((data_copy / TEST_FILE).resolve()) in caplog.text
    assert changed.test.file_fingerprint != first.test.file_fingerprint
    assert changed.train.file_fingerprint == first.train.file_fingerprint


# --- feature stores -----------------------------------------------------------------------------------------------


def extract(data: DatasetSplits) -> PatchFeatures:
    return load_features(data.test, Patching(get_scheme("grid-4")), FEATURES, CPU)


@pytest.mark.parametrize("damage", ["zeroed", "truncated"])
def test_a_damaged_store_shard_is_extracted_again_with_a_warning(
    home: Path, tiny_fashiongen: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = read(tiny_fashiongen)
    store = extract(data).store
    everything = np.arange(store.rows)
    intact = store.read(PATCHES, everything).copy()
    shard = store.shard_dir(1)
    patches = shard / f"{PATCHES}.npy"
    if damage == "zeroed":
        zero_bytes(patches, 128 + (patches.stat().st_size - 128) // 2)  # the header kept
    else:
        truncate(patches)
    others = (store.shard_dir(0) / f"{PATCHES}.npy").stat().st_mtime_ns

    with caplog.at_level(logging.WARNING, logger="kbench.features.store"):
        again = extract(data).store
        np.testing.assert_array_equal(again.read(PATCHES, everything), intact)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(store.root) in warnings[0] and shard.name in warnings[0], warnings
    assert (store.shard_dir(0) / f"{PATCHES}.npy").stat().st_mtime_ns == others, "only the damaged shard is rewritten"


def test_a_shard_damaged_behind_the_writer_is_refused_when_read(home: Path, tiny_fashiongen: Path) -> None:
    data = read(tiny_fashiongen)
    root = store_root(data.test, Patching(get_scheme("grid-4")), FEATURES, SmallCNN().weights_id())
    extract(data)
    reader = PatchFeatures(ShardedStore.open(root))  # a reader that no writer checked for
    zero_bytes(root / "shard-00002" / f"{PATCHES}.npy", 200, 400)
    with pytest.raises(KbenchError, match=re.escape(str(root / "shard-00002")) + ".*does not match its checksum"):
        reader.batch(np.array([14]))
    reader.batch(np.array([0, 7]))  # the intact shards still read


# --- pre-trained checkpoints --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["zeroed tensors", "truncated"])
def test_a_damaged_checkpoint_is_never_used_but_pre_trained_again(
    home: Path, tiny_fashiongen: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_config("smoke")
    cfg.data.dataset, cfg.data.data_dir = "fashiongen", str(tiny_fashiongen)
    trial = Trial(TrialSpec("fashionbert", 3), cfg)
    _, history = pretrained_model(trial)
    path = cache_dir("checkpoints") / f"fashionbert-{trial.pretrain_key()}"
    weights = path / "model.safetensors"
    intact = {name: tensor.clone() for name, tensor in load_file(weights).items()}  # not views of the mapped file
    if damage == "zeroed tensors":
        header = 8 + struct.unpack("<Q", weights.read_bytes()[:8])[0]
        zero_bytes(weights, header)
    else:
        truncate(weights, 0.6)

    with caplog.at_level(logging.WARNING, logger="kbench.engine.pretrained"):
        again, curves = pretrained_model(trial)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "pre-training again" in warnings[0], warnings
    assert curves == history
    state = again.state_dict()
    for name, tensor in load_file(weights).items():
        assert torch.equal(tensor, intact[name]) and torch.equal(state[name], intact[name]), name


def test_a_damaged_training_state_is_not_resumed_from(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = TrainState(cache_dir("checkpoints") / "linear.resume", every=1)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    state.save(model, optimizer, scheduler, {"done": 1})
    assert state.restore(model, optimizer, scheduler) == {"done": 1}
    weights = state.directory / "model.safetensors"
    zero_bytes(weights, 8 + struct.unpack("<Q", weights.read_bytes()[:8])[0])
    fresh = torch.nn.Linear(4, 3)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="kbench.models.train_state"):
        assert state.restore(fresh, torch.optim.AdamW(fresh.parameters()), scheduler) is None
    assert str(state.directory) in caplog.text and "damaged" in caplog.text
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in before.items())


# --- candidate lists ----------------------------------------------------------------------------------------------


def cached_lists(home: Path) -> Path:
    (path,) = (home / "protocols").glob("fashionbert-101-*.json")
    return path


@pytest.mark.parametrize("damage", ["truncated", "edited"])
def test_a_damaged_list_is_restored_only_when_drawn_again_identically(
    home: Path, tiny_fashiongen: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    test = read(tiny_fashiongen).test
    lists = FashionBert101().lists(test, "image", 6, seed=1)
    path = cached_lists(home)
    text = path.read_text()
    if damage == "truncated":
        truncate(path)
    else:  # the positive moved, the fingerprint zeroed: valid JSON of other lists
        edited = json.loads(text)
        edited["candidate_rows"] = [[*rows[1:], rows[0]] for rows in edited["candidate_rows"]]
        edited["data_fingerprint"] = "0" * 16
        path.write_text(json.dumps(edited))
    with caplog.at_level(logging.WARNING, logger="kbench.tasks.protocols"):
        assert FashionBert101().lists(test, "image", 6, seed=1) == lists
    assert str(path) in caplog.text and "identical to those recorded" in caplog.text
    assert path.read_text() == text


def test_a_damaged_list_that_cannot_be_restored_is_refused(home: Path, tiny_fashiongen: Path) -> None:
    from kbench.core.integrity import seal_file, sidecar  # (imported here: the rest of this file runs on older code)

    test = read(tiny_fashiongen).test
    FashionBert101().lists(test, "image", 6, seed=1)
    path = cached_lists(home)
    edited = json.loads(path.read_text())
    edited["positive"] = 3
    path.write_text(json.dumps(edited))
    sidecar(path).unlink()  # nothing left to prove a redraw identical
    with pytest.raises(KbenchError, match=re.escape(str(path)) + ".*kbench cache clear protocols"):
        FashionBert101().lists(test, "image", 6, seed=1)

    seal_file(path)  # consistent checksums, but drawn from other data
    edited["data_fingerprint"] = "0" * 16
    path.write_text(json.dumps(edited))
    seal_file(path)
    with pytest.raises(KbenchError, match="drawn from data of fingerprint 0000000000000000"):
        FashionBert101().lists(test, "image", 6, seed=1)

    assert main(["cache", "clear", "protocols"]) == 0
    assert FashionBert101().lists(test, "image", 6, seed=1) == CandidateLists.from_json(path.read_text())
    assert CandidateLists.from_json(path.read_text()).positive == 0


# --- kbench cache verify | clear ----------------------------------------------------------------------------------


def test_cache_verify_finds_each_damaged_kind_and_clear_removes_them(
    home: Path, tiny_fashiongen: Path, capsys: pytest.CaptureFixture
) -> None:
    data = read(tiny_fashiongen)
    store = extract(data).store
    FashionBert101().lists(data.test, "image", 6, seed=1)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = TrainState(cache_dir("checkpoints") / "linear.resume", every=1)
    state.save(model, optimizer, scheduler, {"done": 1})
    assert main(["cache", "verify"]) == 0
    out = capsys.readouterr().out
    assert f"{store.num_shards + 1 + 1 + 2} cache entries under {home} verified, 0 damaged" in out  # + fingerprints

    shard = store.shard_dir(0)
    zero_bytes(shard / f"{PATCHES}.npy", 300, 301)
    truncate(state.directory / "state.pt")
    lists = cached_lists(home)
    lists.write_text(lists.read_text().replace('"positive": 0', '"positive": 1'))
    (home / "fingerprints" / "broken.json").write_text("{")
    assert main(["cache", "verify"]) == 1
    out = capsys.readouterr().out
    damaged = [line for line in out.splitlines() if line.startswith("damaged: ")]
    assert len(damaged) == 4 and f"{store.num_shards + 5} cache entries under {home} verified, 4 damaged" in out, out
    assert f"damaged: {shard}: {PATCHES}.npy does not match its checksum" in damaged
    assert any(line.startswith(f"damaged: {state.directory}: state.pt is truncated (") for line in damaged)
    assert f"damaged: {lists}: does not match its checksum" in damaged
    assert f"damaged: {home / 'fingerprints' / 'broken.json'}: unreadable (JSONDecodeError)" in damaged
    assert main(["cache", "verify", "features"]) == 1 and "1 damaged" in capsys.readouterr().out

    assert main(["cache", "clear", "features"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"removed {re.escape(str(home / 'features'))} \([\d,]+ bytes\)", out), out
    assert not (home / "features").exists() and (home / "protocols").exists()
    assert main(["cache", "verify", "features"]) == 0
    capsys.readouterr()
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert all(not (home / d).exists() for d in ("checkpoints", "protocols", "fingerprints")), out
    assert out.strip().splitlines()[-1].startswith("removed ") and "bytes of all caches" in out
    assert main(["cache", "verify"]) == 0 and "0 cache entries" in capsys.readouterr().out


def test_synthfashion_damaged_in_the_cache_is_generated_again(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    from kbench.core.config import SynthConfig
    from kbench.core.integrity import MANIFEST
    from kbench.data.synth import SynthFashion

    cfg = DataConfig(synth=SynthConfig(products_train=8, products_test=4, max_poses=2))
    where = SynthFashion().locate(cfg)
    intact = (where / TEST_FILE).read_bytes()
    assert (where / MANIFEST).is_file()
    zero_bytes(where / TEST_FILE, len(intact) // 2, len(intact) // 2 + 4096)
    with caplog.at_level(logging.WARNING, logger="kbench.data.synth"):
        assert SynthFashion().locate(cfg) == where
    assert str(where) in caplog.text and "generating it again" in caplog.text
    assert (where / TEST_FILE).read_bytes() == intact
