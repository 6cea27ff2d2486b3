"""The optimisation loop shared by pre-training and fine-tuning: AdamW, warm-up then linear decay, clipping."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from kbench.core.config import OptimConfig
from kbench.core.device import autocast
from kbench.core.progress import stage
from kbench.data.loader import prefetch
from kbench.features.batches import to_device
from kbench.models.train_state import TrainState

# A step function returns the loss to minimise and the scalars to log for one batch.
StepFn = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def total_steps(cfg: OptimConfig, steps_per_epoch: int) -> int:
    steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def build_optimizer(model: nn.Module, cfg: OptimConfig, steps: int) -> tuple[torch.optim.Optimizer, object]:
    """AdamW with the recipe's betas and epsilon, without weight decay on biases and LayerNorms, with linear warm-up
    and decay over ``steps``."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.adam_epsilon)
    warmup = int(cfg.warmup * steps) if cfg.warmup < 1 else int(cfg.warmup)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, steps)


def fit(
    model: nn.Module,
    make_batch: Callable[[int], dict[str, torch.Tensor]],
    steps_per_epoch: int,
    cfg: OptimConfig,
    step: StepFn,
    device: torch.device,
    precision: str,
    description: str,
    epoch_end: Callable[[int], None] | None = None,
    workers: int = 0,
    state: TrainState | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` for ``cfg.epochs`` (fractions allowed) and return the mean logged scalars of each epoch.

    ``make_batch(k)`` builds the batch of global step ``k`` on the CPU (``workers`` processes build them ahead);
    ``step(batch)`` computes the loss on it once it is on ``device``; ``epoch_end(epoch)`` (1-based) runs after each
    epoch, e.g. to evaluate on the dev split. With ``state``, the fit resumes from the last saved training state and
    saves one every ``state.every`` steps.
    """
    steps = total_steps(cfg, steps_per_epoch)
    optimizer, scheduler = build_optimizer(model, cfg, steps)
    progress = {"done": 0, "history": [], "sums": {}, "count": 0}
    if state is not None:
        progress = state.restore(model, optimizer, scheduler) or progress
    history: list[dict[str, float]] = progress["history"]
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64, device=device))
    sums.update({k: v.to(device) for k, v in progress["sums"].items()})
    count, done = progress["count"], progress["done"]
    model.train()
    with stage(description, steps) as advance:
        advance(done)
        for batch in prefetch(make_batch, range(done, steps), workers, pin=device.type == "cuda"):
            batch = to_device(batch, device)
            with autocast(device, precision):
                loss, logs = step(batch)
            loss.backward()
            if cfg.clip_norm:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            for key, value in logs.items():
                sums[key] += value.detach().double()
            count += 1
            done += 1
            advance(1)
            if done % steps_per_epoch == 0 or done == steps:
                history.append({k: float(v) / max(count, 1) for k, v in sums.items()})
                sums.clear()
                count = 0
                if epoch_end is not None:
                    epoch_end(len(history))
                    model.train()
            if state is not None and state.due(done, steps):
                saved = {k: v.cpu() for k, v in sums.items()}
                state.save(
                    model, optimizer, scheduler, {"done": done, "history": history, "sums": saved, "count": count}
                )
    model.eval()
    return history
