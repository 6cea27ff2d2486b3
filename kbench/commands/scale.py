"""``kbench bench --scale ROWS``: the data path at the paper's shapes, without a CNN, on a store of any size.

It writes a Kaleido-BERT training store of ``ROWS`` rows of random features (55 patches and 19 AKPM view patches
of the profile's encoder size, float16) with the real shard writer, then measures reads from a cold page cache
(each file's cached pages are dropped first): the store read start to end (what the disk can give), uniformly
random batches of whole rows as pre-training reads them, and the whole pre-training input pipeline (store reads,
negative sampling, text, AGM and AKPM in the collator) through the loader's workers. Beside it stands the rate at
which one H100 would consume samples of BERT-base at this sequence length at 45 % MFU, computed from FLOPs: an
estimate, not a measurement.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tabulate import tabulate

from kbench.core.config import Config
from kbench.core.errors import KbenchError
from kbench.core.memory import peak_rss_mb
from kbench.core.paths import atomic_path
from kbench.data.loader import prefetch
from kbench.data.splits import Split
from kbench.data.text import TokenizedText, load_tokenizer
from kbench.engine.pretraining import pretraining_batches
from kbench.features.batches import ModelData
from kbench.features.encoders import ENCODERS, PatchEncoder
from kbench.features.patch_features import BOXES, LOCATIONS, PATCHES, PatchFeatures, Patching, store_layout
from kbench.features.store import ShardedStore
from kbench.models.kaleido.collator import KaleidoCollator
from kbench.models.kaleido.kpg import kpg_patching
from kbench.models.kaleido.model import KaleidoBertConfig

H100_BF16_FLOPS = 989e12  # dense bf16 peak of an H100 SXM
MFU = 0.45
READ_BATCHES = 40  # random batches timed
PIPELINE_STEPS = 24  # pipeline batches timed, after the workers' first batches
ALIGNED_WORDS = 3  # per example: AGM then has aligned pairs to choose from, as with real alignments


def scale_bench(cfg: Config, rows: int, directory: Path, keep: bool) -> dict[str, Any]:
    """Write a store of ``rows`` rows under ``directory``, measure it and (unless ``keep``) remove it."""
    encoder = ENCODERS.get(cfg.features.encoder).untrained()
    model_config = KaleidoBertConfig(vocab_size=30522, visual_feature_size=encoder.out_dim)
    patching = kpg_patching(model_config.kpg, model_config.saliency, True)
    root = directory / f"scale-{rows}"
    if root.exists():
        shutil.rmtree(root)
    try:
        store, write_rate = write_store(root, rows, patching, encoder, cfg)
        sequential = sequential_read(store)
        random_read = random_batch_read(store, cfg.pretrain.batch_size)
        pipeline = pipeline_rate(store, model_config, cfg)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    flops = training_flops(cfg, patching.scheme.num_patches, encoder.out_dim)
    h100 = H100_BF16_FLOPS * MFU / flops
    row_bytes = sum(spec.row_bytes for spec in store.arrays.values())
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "rows": rows,
        "row": f"{patching.name}: {' x '.join(map(str, store.arrays[PATCHES].shape))} float16 patch features",
        "store_gb": round(store.nbytes() / 1e9, 2),
        "write_mb_per_s": round(write_rate, 1),
        "sequential_read_mb_per_s": round(sequential, 1),
        "random_batch_read_mb_per_s": round(random_read, 1),
        "read_ratio": round(random_read / sequential, 3),
        "pipeline_samples_per_s": round(pipeline, 1),
        "pipeline_workers": cfg.runtime.loader_workers,
        "batch_size": cfg.pretrain.batch_size,
        "peak_rss_mb": round(max(peak_rss_mb(), children), 1),
        "h100_estimate": {
            "samples_per_s": round(h100, 1),
            "read_mb_per_s_to_feed_it": round(h100 * row_bytes / 1e6, 1),
            "training_flops_per_sample": flops,
            "assumes": f"the profile's encoder at {MFU:.0%} MFU of {H100_BF16_FLOPS / 1e12:.0f} TFLOP/s (bf16, dense)",
            "kind": "estimate from FLOPs, not a measurement",
        },
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "kept": str(root) if keep else None},
    }


def write_store(
    root: Path, rows: int, patching: Patching, encoder: PatchEncoder, cfg: Config
) -> tuple[ShardedStore, float]:
    """The store written with the shard writer (random rows, one batch reused: the writer is timed, not the RNG)."""
    split = Split("train", Path("scale.h5"), pd.DataFrame({"row": []}), "scale")
    arrays, info = store_layout(split, patching, cfg.features, encoder)
    store = ShardedStore.create(root, rows, cfg.features.shard_rows, arrays, info)
    rng = np.random.default_rng(0)
    batch = cfg.features.batch_size * 16
    block = {
        PATCHES: rng.standard_normal((batch, *arrays[PATCHES].shape), dtype=np.float32).astype(np.float16),
        LOCATIONS: rng.random((batch, *arrays[LOCATIONS].shape), dtype=np.float32),
        BOXES: np.tile(np.array([0, 0, 256, 256], dtype=np.int32), (batch, 1)),
    }
    start = time.perf_counter()
    for shard in store.missing():
        span = store.shard_span(shard)
        with store.shard_writer(shard) as writer:
            for first in range(span.start, span.stop, batch):
                n = min(batch, span.stop - first)
                writer.append({k: v[:n] for k, v in block.items()})
    return store, store.nbytes() / 1e6 / (time.perf_counter() - start)


def drop_cache(store: ShardedStore) -> None:
    """Evict the store's files from the page cache, so the next reads come from the disk."""
    for path in store.root.rglob("*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sequential_read(store: ShardedStore) -> float:
    """MB/s reading every file of the store start to end in 8 MiB reads."""
    drop_cache(store)
    buffer = bytearray(8 << 20)
    total, start = 0, time.perf_counter()
    for path in sorted(store.root.rglob("*.npy")):
        with open(path, "rb", buffering=0) as f:
            while got := f.readinto(buffer):
                total += got
    return total / 1e6 / (time.perf_counter() - start)


def random_batch_read(store: ShardedStore, batch_size: int) -> float:
    """MB/s reading uniformly random batches of whole rows (features, views, locations), as training reads them."""
    drop_cache(store)
    rng = np.random.default_rng(1)
    total, start = 0, time.perf_counter()
    for _ in range(READ_BATCHES):
        positions = rng.choice(store.rows, size=min(batch_size, store.rows), replace=False)
        total += store.read(PATCHES, positions).nbytes + store.read(LOCATIONS, positions).nbytes
    return total / 1e6 / (time.perf_counter() - start)


def pipeline_rate(store: ShardedStore, config: KaleidoBertConfig, cfg: Config) -> float:
    """Samples/s of the Kaleido-BERT pre-training input pipeline over the store, from a cold page cache."""
    data, aligned = synthetic_split(store, cfg)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    collate = KaleidoCollator(config, tokenizer, data, aligned)
    make = pretraining_batches(data, collate, cfg.pretrain, seed=0)
    drop_cache(store)
    warmup = max(1, cfg.runtime.loader_workers)
    batches = prefetch(make, range(warmup + PIPELINE_STEPS), cfg.runtime.loader_workers)
    for _ in range(warmup):  # the workers' start and their first batches
        next(batches)
    samples, start = 0, time.perf_counter()
    for batch in batches:
        samples += len(batch["input_ids"])
    return samples / (time.perf_counter() - start)


def synthetic_split(store: ShardedStore, cfg: Config) -> tuple[ModelData, list[list[tuple[str, int, int]]]]:
    """The store's rows as a training split: random word-piece texts of the profile's length, one product per image,
    and the first words of each text aligned to random cells of levels 3 to 5."""
    n, length = store.rows, cfg.data.max_text_len
    rng = np.random.default_rng(2)
    ids = rng.integers(2000, 29000, size=(n, length))
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    ids[:, 1 : 1 + ALIGNED_WORDS] = np.arange(2000, 2000 + ALIGNED_WORDS)
    word_ids = np.broadcast_to(np.arange(-1, length - 1), (n, length)).copy()
    word_ids[:, -1] = -1
    text = TokenizedText(torch.from_numpy(ids), torch.ones(n, length, dtype=torch.long), torch.from_numpy(word_ids))
    spelled = [
        t.removeprefix("##") for t in load_tokenizer(cfg.data.tokenizer).convert_ids_to_tokens(range(2000, 2003))
    ]
    cells = rng.integers(0, 9, size=(n, ALIGNED_WORDS))
    aligned = [
        [(spelled[w], level, int(c) % (level * level)) for w, c in enumerate(row) for level in (3, 4, 5)]
        for row in cells
    ]
    meta = pd.DataFrame({"row": np.arange(n), "product_id": np.arange(n)})
    return ModelData(Split("train", store.root, meta, "scale"), text, PatchFeatures(store)), aligned


def training_flops(cfg: Config, patches: int, dim: int) -> float:
    """Training FLOPs per sample (3 x forward) of the profile's encoder over text and patch tokens: the dense layers,
    the attention products and the patch projection; heads and embeddings left out."""
    m = cfg.model
    tokens = cfg.data.max_text_len + patches
    layer = 2 * tokens * (4 * m.hidden_size**2 + 2 * m.hidden_size * m.intermediate_size)
    layer += 4 * tokens**2 * m.hidden_size
    forward = m.num_hidden_layers * layer + 2 * patches * dim * m.hidden_size
    return 3.0 * forward


def run_scale_bench(cfg: Config, rows: int, directory: Path, keep: bool, out: Path) -> str:
    """``kbench bench --scale``: measure, write the figures as JSON to ``out`` and return them as a table."""
    if rows < 1:
        raise KbenchError(f"--scale needs at least one row, got {rows}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KbenchError(f"--dir {directory}: cannot create it ({exc.strerror})") from None
    report = scale_bench(cfg, rows, directory, keep)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    h100 = report["h100_estimate"]
    lines = [
        ("store", f"{report['rows']} rows of {report['row']}: {report['store_gb']} GB"),
        ("write", f"{report['write_mb_per_s']} MB/s"),
        ("sequential read (the disk's limit)", f"{report['sequential_read_mb_per_s']} MB/s"),
        (f"random batches of {report['batch_size']} rows", f"{report['random_batch_read_mb_per_s']} MB/s"),
        ("read ratio (random / sequential)", f"{report['read_ratio']}"),
        (
            f"pre-training input pipeline ({report['pipeline_workers']} workers)",
            f"{report['pipeline_samples_per_s']} samples/s",
        ),
        (
            "one H100 at 45 % MFU (estimate)",
            f"{h100['samples_per_s']} samples/s, {h100['read_mb_per_s_to_feed_it']} MB/s",
        ),
        ("peak RSS", f"{report['peak_rss_mb']} MB"),
    ]
    table = tabulate(lines, headers=["", cfg.profile + " profile"], tablefmt="github")
    return f"{table}\n\n(cold page cache for every read; written to {out})"
