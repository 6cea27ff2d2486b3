"""The optimisation loop shared by pre-training and fine-tuning: AdamW, warm-up then linear decay, clipping."""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from kbench.config import OptimConfig
from kbench.progress import stage

# A step function returns the loss to minimise and the scalars to log for one batch.
StepFn = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked for; full precision otherwise."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def total_steps(cfg: OptimConfig, steps_per_epoch: int) -> int:
    steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def build_optimizer(model: nn.Module, cfg: OptimConfig, steps: int) -> tuple[torch.optim.Optimizer, object]:
    """AdamW without weight decay on biases and LayerNorms, with linear warm-up and decay over ``steps``."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    warmup = int(cfg.warmup * steps) if cfg.warmup < 1 else int(cfg.warmup)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, steps)


def fit(
    model: nn.Module,
    batches: Callable[[int], Iterable[dict[str, torch.Tensor]]],
    steps_per_epoch: int,
    cfg: OptimConfig,
    step: StepFn,
    device: torch.device,
    precision: str,
    description: str,
    epoch_end: Callable[[int], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` for ``cfg.epochs`` (fractions allowed) and return the mean logged scalars of each epoch.

    ``batches(epoch)`` yields that epoch's batches; ``step(batch)`` computes the loss on one of them;
    ``epoch_end(epoch)`` (1-based) runs after each epoch, e.g. to evaluate on the dev split.
    """
    steps = total_steps(cfg, steps_per_epoch)
    optimizer, scheduler = build_optimizer(model, cfg, steps)
    model.train()
    history: list[dict[str, float]] = []
    done = 0
    with stage(description, steps) as advance:
        for epoch in range(math.ceil(steps / steps_per_epoch)):
            sums: dict[str, float] = defaultdict(float)
            count = 0
            for batch in batches(epoch):
                with autocast(device, precision):
                    loss, logs = step(batch)
                loss.backward()
                if cfg.clip_norm:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                for key, value in logs.items():
                    sums[key] += float(value.detach())
                count += 1
                done += 1
                advance(1)
                if done >= steps:
                    break
            history.append({k: v / max(count, 1) for k, v in sums.items()})
            if epoch_end is not None:
                epoch_end(epoch + 1)
                model.train()
            if done >= steps:
                break
    model.eval()
    return history
