"""Pre-training: the zoo entry's own objectives on the training split, checkpointed by config hash.

Inside a torch process group (Ray Train workers, see ``kbench.engine.distributed``) it runs data-parallel: every
worker draws the same global batches, takes its own slice of each, and DDP averages the gradients. A training
state is saved every ``pretrain.save_every`` steps beside the checkpoint, and a killed pre-training (a Ray Tune
trial restarted after a crash included) resumes from it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from kbench.core.config import PAIRS, PretrainConfig
from kbench.core.paths import cache_dir
from kbench.data.loader import (
    PRETRAIN_MASKS,
    PRETRAIN_NEGATIVES,
    PRETRAIN_ORDER,
    epoch_order,
    step_generator,
    step_rng,
)
from kbench.engine.trial import Trial, seed_everything
from kbench.features.batches import ModelData, NegativeSampler
from kbench.models.base import Collator, VLPreTrainedModel
from kbench.models.train_state import TrainState
from kbench.models.training import fit
from kbench.models.zoo import build_model

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
RESUME_SUFFIX = ".resume"  # the training state beside the checkpoint it will become


def training_state(trial: Trial) -> TrainState:
    """Where the trial's pre-training saves its progress."""
    name = f"{trial.spec.model}-{trial.pretrain_key()}{RESUME_SUFFIX}"
    return TrainState(cache_dir("checkpoints") / name, trial.cfg.pretrain.save_every)


def save_checkpoint(model: VLPreTrainedModel, history: list[dict[str, float]], directory: Path) -> None:
    """The model's weights and config, and its per-epoch curves, in ``directory``."""
    model.save_pretrained(directory)
    (directory / HISTORY_FILE).write_text(json.dumps(history, indent=1))


def pretrain(trial: Trial, state: TrainState | None = None) -> tuple[VLPreTrainedModel, list[dict[str, float]]]:
    """Train a fresh model (or one initialised from ``model.init_from``) with its pre-training objectives, resuming
    from ``state`` where one was saved."""
    cfg = trial.cfg.pretrain
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    data = trial.data("train")
    seed = trial.spec.seed
    seed_everything(seed)  # the checkpoint must depend on its key alone, not on what ran before it
    init = trial.cfg.model.init_from
    model = build_model(trial.spec.model, init, init_mlm_head=cfg.init_mlm_head, **trial.model_kwargs())
    model = model.to(trial.device)
    collate = trial.model_cls.pretraining_collator(model.config, trial.context)
    steps_per_epoch = epoch_steps(cfg, len(data))
    make_batch = pretraining_batches(data, collate, cfg, seed, rank, world, trial.model_cls.pretrains_on_mismatches)

    # Some heads are trained only in fine-tuning (VL-BERT's ITM, a dual encoder's match bias, disabled pretext heads).
    trained = DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model

    def step(batch: dict[str, torch.Tensor]):
        out = trained(**batch)
        return out.loss, {"loss": out.loss, **out.losses, **out.accuracies}

    runtime = trial.cfg.runtime
    history = fit(
        trained,
        make_batch,
        steps_per_epoch,
        cfg,
        step,
        trial.device,
        runtime.precision,
        "pre-train",
        workers=runtime.loader_workers,
        state=state,
    )
    return model, mean_over_ranks(history) if world > 1 else history


def pretraining_batches(
    data: ModelData,
    collate: Collator,
    cfg: PretrainConfig,
    seed: int,
    rank: int = 0,
    world: int = 1,
    mismatches: bool = True,
) -> Callable[[int], dict[str, torch.Tensor]]:
    """The input pipeline of pre-training: ``make(step)`` is the batch of global step ``step``, a function of the
    step alone (every rank draws the same global batch and keeps its own slice of it). Without ``mismatches``
    every image comes with its own text (an entry with no matching objective in pre-training)."""
    sampler = NegativeSampler(data.split.meta["product_id"].to_numpy())
    n = len(data)
    steps_per_epoch = epoch_steps(cfg, n)
    part = slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)
    views = bool(data.features.views)

    def make(step: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(step, steps_per_epoch)
        order = epoch_order(seed, PRETRAIN_ORDER, epoch, epoch_examples(cfg, n))
        slots = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        images = slots % n  # an epoch of pairs shows image k in slots k and n + k
        rng = step_rng(seed, PRETRAIN_NEGATIVES, step)
        if cfg.epoch_unit == PAIRS or not mismatches:
            texts, labels = images.copy(), np.ones(len(images), dtype=np.int64)
            second = (slots >= n) & mismatches  # an image's second showing pairs it with another product's text
            texts[second], labels[second] = sampler.sample(images[second], 1.0, rng)
        else:
            texts, labels = sampler.sample(images, cfg.itm_negative_rate, rng)
        images, texts, labels = images[part], texts[part], labels[part]
        batch = data.inputs(images, texts, views=views)
        batch["itm_labels"] = torch.from_numpy(labels)
        batch["image_positions"], batch["text_positions"] = torch.from_numpy(images), torch.from_numpy(texts)
        return collate(batch, step_generator(seed, PRETRAIN_MASKS, step, rank))

    return make


def epoch_examples(cfg: PretrainConfig, images: int) -> int:
    """Examples in a pre-training epoch of ``images`` training images: one each, or two under ``pairs``."""
    return 2 * images if cfg.epoch_unit == PAIRS else images


def epoch_steps(cfg: PretrainConfig, images: int) -> int:
    """Steps in a pre-training epoch (the last, incomplete batch is dropped)."""
    return max(1, epoch_examples(cfg, images) // cfg.batch_size)


def mean_over_ranks(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """Each epoch's logged means averaged over the process group (every rank gets the same curves)."""
    keys = sorted(history[0]) if history else []
    values = torch.tensor([[epoch[k] for k in keys] for epoch in history], dtype=torch.float64)
    dist.all_reduce(values)
    values /= dist.get_world_size()
    return [dict(zip(keys, row.tolist(), strict=True)) for row in values]
