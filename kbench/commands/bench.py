"""``kbench bench``: throughput on this machine of feature extraction, pre-training and retrieval scoring.

Inputs are random tensors of the profile's shapes (throughput does not depend on their values); the
pre-training step is timed beside a bare transformers ``BertModel`` of the same shape and sequence length.
"""

from __future__ import annotations

import json
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tabulate import tabulate
from transformers import BertConfig, BertModel

from kbench.core.config import Config
from kbench.core.device import autocast, resolve_device
from kbench.core.paths import atomic_path
from kbench.data.splits import Split
from kbench.data.text import TokenizedText, load_tokenizer
from kbench.features.batches import ModelData, to_device
from kbench.features.encoders import ENCODERS
from kbench.features.patch_features import Patching, encode_patches, features_from_arrays
from kbench.models.context import PretrainingContext
from kbench.models.kaleido.aag import Alignments
from kbench.models.kaleido.preparation import ALIGNMENTS
from kbench.models.zoo import MODELS, build_model

WARMUP, REPEATS = 2, 5


def run_bench(cfg: Config, model_name: str, out: Path) -> str:
    """Time the three stages; write the figures as JSON to ``out`` and return them as a table."""
    device = resolve_device(cfg.runtime.device)
    model_cls = MODELS.get(model_name)
    encoder = ENCODERS.get(cfg.features.encoder)(weights=None).to(device).eval()
    kwargs = {**_sizes(cfg), **cfg.models.get(model_name, {}), "visual_feature_size": encoder.out_dim}
    model = build_model(model_name, None, **kwargs).to(device)
    scheme = model_cls.patching(model.config).scheme
    rows = [extraction(cfg, scheme, encoder, device)]
    seq_len = cfg.data.max_text_len + scheme.num_patches
    with tempfile.TemporaryDirectory(prefix="kbench-bench-") as tmp:
        patching = model_cls.patching(model.config)
        context = synthetic_context(cfg, patching, encoder.out_dim, Path(tmp), device)
        rows.append(pretraining(cfg, model, context, device))
    rows.append(bare_bert(cfg, seq_len, device))
    rows.append(scoring(cfg, model, device, scheme.num_patches, encoder.out_dim))
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch_threads": torch.get_num_threads(),
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "profile": cfg.profile,
        "model": model_name,
        "results": rows,
    }
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    table = tabulate(
        [[r["stage"], r["shape"], f"{r['rate']:.1f} {r['unit']}", r["peak_memory_mb"]] for r in rows],
        headers=["stage", "shape", "throughput", "peak memory (MB)"],
        tablefmt="github",
    )
    memory = "peak CUDA memory allocated in the stage" if device.type == "cuda" else "peak RSS of the process so far"
    return f"{table}\n\n({cfg.profile} profile on {device}; memory: {memory}; written to {out})"


def extraction(cfg: Config, scheme, encoder, device: torch.device) -> dict:
    images = torch.randint(0, 256, (cfg.features.batch_size, 256, 256, 3), dtype=torch.uint8, device=device)
    boxes = scheme.boxes((0, 0, 256, 256))
    seconds = _time(lambda: encode_patches(images, boxes, encoder, cfg.features.crop_size), device)
    return _row(
        f"feature extraction ({cfg.features.encoder}, {scheme.name})",
        f"{len(images)} images x {scheme.num_patches} crops of {cfg.features.crop_size}px",
        len(images) / seconds,
        "images/s",
        device,
    )


def synthetic_context(
    cfg: Config, patching: Patching, dim: int, directory: Path, device: torch.device
) -> PretrainingContext:
    """A trial's context for timing a pre-training step: random data of the profile's shapes in a store under
    ``directory``, with the AKPM views when the entry reads them but no AAG alignments (AGM then masks at random, at
    the same budgets and the same cost)."""
    n, text_len = cfg.pretrain.batch_size, cfg.data.max_text_len
    batch = _random_batch(n, text_len, patching.scheme.num_patches, dim, torch.device("cpu"))
    text = TokenizedText(batch["input_ids"], batch["attention_mask"], batch["word_ids"])
    views = {view.name: np.random.rand(n, view.size, dim) for view in patching.views}
    features = features_from_arrays(
        directory / "store",
        batch["patch_features"].numpy(),
        batch["patch_locations"].numpy(),
        np.zeros((n, 4), dtype=np.int32),
        views,
    )
    meta = pd.DataFrame({"row": np.arange(n), "product_id": np.arange(n)})
    train = ModelData(Split("train", Path("random"), meta, "random"), text, features)
    return PretrainingContext(
        config=cfg,
        seed=0,
        device=device,
        tokenizer=load_tokenizer(cfg.data.tokenizer),
        patching=patching,
        load=lambda split: train,
        cache={ALIGNMENTS: Alignments([[] for _ in range(n)], [])},
    )


def pair_batch(train: ModelData) -> dict[str, torch.Tensor]:
    """A batch of all of ``train``'s pairs as pre-training draws them, half of them mismatched."""
    n = len(train)
    images, texts = np.arange(n), np.arange(n)
    texts[1::2] -= 1  # every second image is shown its neighbour's text
    batch = train.inputs(images, texts, views=bool(train.features.views))
    batch["itm_labels"] = torch.from_numpy((images == texts).astype(np.int64))
    batch["image_positions"], batch["text_positions"] = torch.from_numpy(images), torch.from_numpy(texts)
    return batch


def pretraining(cfg: Config, model, context: PretrainingContext, device: torch.device) -> dict:
    """One optimisation step of the entry's own objectives, its collator included."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    collate = type(model).pretraining_collator(model.config, context)
    batch = pair_batch(context.data("train"))
    generator = torch.Generator().manual_seed(0)
    model.train()

    def step() -> None:
        b = collate({k: v.clone() for k, v in batch.items()}, generator)
        with autocast(device, cfg.runtime.precision):
            loss = model(**to_device(b, device)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = _time(step, device)
    n = len(batch["input_ids"])
    return _row(f"pre-training step ({model.config.model_type})", _shape(cfg, n), n / seconds, "samples/s", device)


def bare_bert(cfg: Config, seq_len: int, device: torch.device) -> dict:
    bert = BertModel(BertConfig(**_sizes(cfg))).to(device).train()
    optimizer = torch.optim.AdamW(bert.parameters(), lr=1e-4)
    n = cfg.pretrain.batch_size
    ids = torch.randint(1000, 2000, (n, seq_len), device=device)

    def step() -> None:
        with autocast(device, cfg.runtime.precision):
            loss = bert(input_ids=ids).last_hidden_state.float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = _time(step, device)
    return _row("bare transformers BertModel step", f"{n} x {seq_len} tokens", n / seconds, "samples/s", device)


def scoring(cfg: Config, model, device: torch.device, patches: int, dim: int) -> dict:
    n = cfg.runtime.eval_batch_size
    batch = _random_batch(n, cfg.data.max_text_len, patches, dim, device)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "patch_features", "patch_locations")}
    model.eval()

    def score() -> None:
        with torch.inference_mode(), autocast(device, cfg.runtime.precision):
            model.itm_logits(**inputs)

    seconds = _time(score, device)
    return _row("retrieval scoring (ITM logits)", f"{n} pairs per batch", n / seconds, "pairs/s", device)


def _sizes(cfg: Config) -> dict:
    m = cfg.model
    return {
        "hidden_size": m.hidden_size,
        "num_hidden_layers": m.num_hidden_layers,
        "num_attention_heads": m.num_attention_heads,
        "intermediate_size": m.intermediate_size,
    }


def _random_batch(n: int, text_len: int, patches: int, dim: int, device: torch.device) -> dict:
    return {
        "input_ids": torch.randint(1000, 2000, (n, text_len)),
        "attention_mask": torch.ones(n, text_len, dtype=torch.long),
        "word_ids": torch.arange(text_len).expand(n, text_len).clone(),
        "patch_features": torch.rand(n, patches, dim),
        "patch_locations": torch.rand(n, patches, 5),
        "itm_labels": torch.randint(0, 2, (n,)),
    }


def _shape(cfg: Config, n: int) -> str:
    m = cfg.model
    return f"batch {n}, {m.num_hidden_layers}x{m.hidden_size}"


def _time(fn: Callable[[], object], device: torch.device) -> float:
    """Median seconds of ``fn`` after warm-up."""
    for _ in range(WARMUP):
        fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(REPEATS):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _row(stage: str, shape: str, rate: float, unit: str, device: torch.device) -> dict:
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS, KiB on Linux
    return {"stage": stage, "shape": shape, "rate": rate, "unit": unit, "peak_memory_mb": round(peak)}
