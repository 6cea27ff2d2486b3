"""Feature extraction: a split's images cut, encoded and written into its store shard by shard, resumably.

Each shard is encoded from its own rows, in batches of ``features.batch_size`` counted from the shard's first
row, and committed atomically; a rerun after an interruption (``kill -9`` included) continues at the first
missing shard and ends with the store an uninterrupted extraction writes (bitwise on a CPU). Memory is
O(batch). ``kbench run``, ``ablate`` and ``tune`` extract every store their trials need before the trials start,
one Ray task per shard (trial-sized: its CPUs, and one GPU where trials have GPUs), at most ``features.workers``
at once, on this machine or the cluster; a store a trial finds missing is extracted in the trial's process.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path

import h5py
import numpy as np
import torch
from filelock import FileLock

from kbench.core.config import FeatureConfig, RuntimeConfig
from kbench.core.device import resolve_device
from kbench.core.errors import KbenchError
from kbench.core.memory import peak_rss_mb, reset_peak
from kbench.core.paths import cache_dir, check_space
from kbench.core.progress import stage
from kbench.data.layout import IMAGE_KEY
from kbench.data.splits import Split, read_rows
from kbench.features.encoders import PatchEncoder, build_encoder
from kbench.features.patch_features import (
    BOXES,
    LOCATIONS,
    PATCHES,
    PatchFeatures,
    Patching,
    cut,
    encode_crops,
    lock,
    store_layout,
    store_root,
)
from kbench.features.patches import locations
from kbench.features.store import ShardedStore

log = logging.getLogger(__name__)

# A store to extract: a split's examples, cut and encoded as the patching says.
Job = tuple[Split, Patching]
_warned_old_format = False


def load_features(split: Split, patching: Patching, cfg: FeatureConfig, device: torch.device) -> PatchFeatures:
    """The features of ``split``, extracting the shards its store still lacks in this process."""
    encoder = build_encoder(cfg.encoder, cfg.weights)
    root = store_root(split, patching, cfg, encoder.weights_id())
    with FileLock(_lock_path(root)):
        store = _begin(root, split, patching, cfg, encoder)
        missing = store.missing()
        if missing:
            check_space(root, store.missing_bytes(), f"the {patching.name} features of {split.name}")
            log.info(
                "extracting %s patch features of %s (%s) into %s", patching.name, split.name, split.path.name, root
            )
            encoder.to(device)
            rows = split.meta["row"].to_numpy()
            todo = sum(len(store.shard_span(k)) for k in missing)
            with stage(features_label(split.name, patching), todo) as advance:
                for shard in missing:
                    span = store.shard_span(shard)
                    extract_shard(
                        store, shard, split.path, rows[span.start : span.stop], patching, encoder, cfg, device, advance
                    )
    return PatchFeatures(store)


def features_label(split: str, patching: Patching) -> str:
    """The progress label of extracting ``split``'s store: whole words, short enough for an 80-column bar line
    (``features train · kaleido, locked``)."""
    locked = ", locked" if patching.detector is not None else ""
    return f"features {split} · {patching.scheme.name}{locked}"


def extract_shard(
    store: ShardedStore,
    shard: int,
    data_path: Path,
    rows: np.ndarray,
    patching: Patching,
    encoder: PatchEncoder,
    cfg: FeatureConfig,
    device: torch.device,
    advance: Callable[[float], None] = lambda n: None,
) -> None:
    """Encode the images of ``shard`` (``rows``: their rows in the data file) and commit it."""
    detector, scheme = patching.detector, patching.scheme
    if len(rows) != len(store.shard_span(shard)):
        raise ValueError(f"shard {shard} of {store.name} has {len(store.shard_span(shard))} rows, got {len(rows)}")
    with h5py.File(data_path, "r") as src, store.shard_writer(shard) as writer:
        images = src[IMAGE_KEY]
        height, width = images.shape[1:3]
        cells = scheme.boxes((0, 0, width, height))
        for start in range(0, len(rows), cfg.batch_size):
            raw = read_rows(images, rows[start : start + cfg.batch_size])
            boxes = detector.boxes(raw) if detector is not None else np.tile([0, 0, width, height], (len(raw), 1))
            x = torch.from_numpy(raw).to(device).permute(0, 3, 1, 2).float().div_(255)
            if detector is not None:
                x = lock(x, boxes)
            crops = cut(x, cells, cfg.crop_size)
            encoded = encode_crops(torch.cat([crops, *patching.view_crops(crops)], dim=1), encoder).cpu().numpy()
            cell_locations = [locations(scheme.boxes(tuple(b)), width, height) for b in boxes.tolist()]
            writer.append({PATCHES: encoded, LOCATIONS: np.stack(cell_locations), BOXES: boxes})
            advance(len(raw))


def extract_with_ray(jobs: Iterable[Job], cfg: FeatureConfig, runtime: RuntimeConfig) -> dict[str, float]:
    """Extract every missing shard of the stores of ``jobs`` as Ray tasks, at most ``cfg.workers`` at once; return
    the wall time and the largest peak memory of a task (``time/extraction_s``, ``mem/extraction_peak_mb``), or
    nothing when every store was complete.

    Needs a connected Ray; the stores go under ``KBENCH_HOME``, which on a cluster must be storage every node sees.
    """
    import ray

    if cfg.workers < 1:
        raise KbenchError(f"features.workers must be at least 1, got {cfg.workers}")
    encoder = build_encoder(cfg.encoder, cfg.weights)
    with ExitStack() as locks:
        pending: deque[tuple[ShardedStore, int, Job]] = deque()
        for split, patching in _unique(jobs, cfg, encoder.weights_id()):
            root = store_root(split, patching, cfg, encoder.weights_id())
            locks.enter_context(FileLock(_lock_path(root)))
            store = _begin(root, split, patching, cfg, encoder)
            pending.extend((store, shard, (split, patching)) for shard in store.missing())
        if not pending:
            return {}
        stores = {store.name for store, _, _ in pending}
        _check_space({store.root: store for store, _, _ in pending}.values())
        total = sum(len(store.shard_span(shard)) for store, shard, _ in pending)
        log.info(
            "extracting %d shards (%d images) of %d feature stores, %d Ray tasks at a time",
            len(pending),
            total,
            len(stores),
            cfg.workers,
        )
        task = ray.remote(_extract_task).options(
            num_cpus=runtime.cpus_per_trial, num_gpus=1 if runtime.gpus_per_trial > 0 else 0
        )
        started, done_rows, peak = time.monotonic(), 0, 0.0
        in_flight: dict = {}
        _, _, (split, patching) = pending[0]
        label = features_label(split.name, patching) if len(stores) == 1 else f"features · {len(stores)} stores"
        with stage(label, total) as advance:
            while pending or in_flight:
                while pending and len(in_flight) < cfg.workers:
                    store, shard, (split, patching) = pending.popleft()
                    span = store.shard_span(shard)
                    rows = split.meta["row"].to_numpy()[span.start : span.stop]
                    ref = task.remote(str(store.root), shard, str(split.path), rows, patching, cfg, runtime.device)
                    in_flight[ref] = (store, shard)
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                store, shard = in_flight.pop(ready[0])
                try:
                    peak = max(peak, ray.get(ready[0]))
                except ray.exceptions.RayTaskError as exc:
                    _settle(in_flight)
                    if isinstance(exc.cause, KbenchError):  # a full disk, damaged input: its one line as it is
                        raise KbenchError(str(exc.cause)) from None
                    raise KbenchError(f"extracting shard {shard} of {store.name} failed: {exc.cause}") from None
                rows = len(store.shard_span(shard))
                done_rows += rows
                advance(rows)
                rate = done_rows / max(time.monotonic() - started, 1e-9)
                log.info(
                    "features: %s shard %d of %d written; %d of %d images, %.0f images/s, %.0f s left",
                    store.name,
                    shard + 1,
                    store.num_shards,
                    done_rows,
                    total,
                    rate,
                    (total - done_rows) / rate,
                )
        return {"time/extraction_s": time.monotonic() - started, "mem/extraction_peak_mb": round(peak, 1)}


def _check_space(stores: Iterable[ShardedStore]) -> None:
    """Refuse, before any is written, stores whose missing shards need more space than their disk has free."""
    stores = list(stores)
    needed = sum(store.missing_bytes() for store in stores)
    where = stores[0].root if len(stores) == 1 else stores[0].root.parent
    names = ", ".join(store.name for store in stores)
    what = "a feature store" if len(stores) == 1 else f"{len(stores)} feature stores ({names})"
    check_space(where, needed, what)


def _settle(in_flight: dict) -> None:
    """Cancel the shard tasks still running after one failed and wait for them, so that each removes its temporary
    shard before the driver gives up (the next run's writer would, but the space stays taken until then)."""
    import ray

    for ref in in_flight:
        ray.cancel(ref)
    ray.wait(list(in_flight), num_returns=len(in_flight), timeout=60)


def _extract_task(
    root: str, shard: int, data_path: str, rows: np.ndarray, patching: Patching, cfg: FeatureConfig, device: str
) -> float:
    """One Ray task: extract and commit one shard of the store at ``root``; its peak resident set in MiB."""
    reset_peak()
    target = resolve_device(device)
    encoder = build_encoder(cfg.encoder, cfg.weights).to(target)
    store = ShardedStore.open(Path(root))
    extract_shard(store, shard, Path(data_path), rows, patching, encoder, cfg, target)
    return peak_rss_mb()


def _unique(jobs: Iterable[Job], cfg: FeatureConfig, encoder_id: str) -> list[Job]:
    seen, out = set(), []
    for split, patching in jobs:
        root = store_root(split, patching, cfg, encoder_id)
        if root not in seen:
            seen.add(root)
            out.append((split, patching))
    return out


def _begin(root: Path, split: Split, patching: Patching, cfg: FeatureConfig, encoder: PatchEncoder) -> ShardedStore:
    """The store at ``root``, begun (or resumed) with its layout, temporary shards of a dead writer and shards that
    fail their checksums removed. Call with the store's lock held."""
    arrays, info = store_layout(split, patching, cfg, encoder)
    store = ShardedStore.create(root, len(split), cfg.shard_rows, arrays, info)
    store.clean()
    store.drop_damaged()
    if store.missing():
        _note_old_stores()
    return store


def _lock_path(root: Path) -> str:
    return str(root.parent / f"{root.name}.lock")


def _note_old_stores() -> None:
    """Say once that stores of the old single-file format are no longer read (they are never read wrongly)."""
    global _warned_old_format
    old = sorted(cache_dir("features").glob("*.h5"))
    if old and not _warned_old_format:
        _warned_old_format = True
        size = sum(p.stat().st_size for p in old) / 2**30
        log.warning(
            "%d feature stores of an older kbench (HDF5 files, %.1f GB) in %s are no longer read; features are "
            "extracted again into sharded stores. Delete the .h5 files to free the space.",
            len(old),
            size,
            old[0].parent,
        )
