"""Pre-training: the zoo entry's own objectives on the training split, checkpointed by config hash.

Inside a torch process group (Ray Train workers, see ``kbench.distributed``) it runs data-parallel: every
worker draws the same global batches, takes its own slice of each, and DDP averages the gradients.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from filelock import FileLock
from torch.nn.parallel import DistributedDataParallel

from kbench.batches import NegativeSampler
from kbench.paths import atomic_dir, cache_dir
from kbench.training import fit
from kbench.trial import Trial, seed_everything
from kbench.zoo import VLPreTrainedModel, build_model

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
# Added to the seed per rank for the collator's masking draws; rank 0 draws what a single process draws.
RANK_SEED_STRIDE = 1_000_003


def pretrained_model(trial: Trial) -> tuple[VLPreTrainedModel, list[dict[str, float]]]:
    """The trial's pre-trained model and its per-epoch curves, trained now or loaded from the checkpoint
    that any earlier trial with the same pre-training hash left in the cache.

    A cached checkpoint whose weights no longer fit the entry's parameters (left by an older version of its
    code) is a cache miss: it is removed and pre-trained again rather than loaded with parts left at random.
    """
    path = cache_dir("checkpoints") / f"{trial.spec.model}-{trial.pretrain_key()}"
    with FileLock(str(path) + ".lock"):
        model = None
        if (path / HISTORY_FILE).exists():
            model, info = trial.model_cls.from_pretrained(path, output_loading_info=True)
            misfit = {kind: sorted(keys) for kind, keys in info.items() if kind.endswith("_keys") and keys}
            if misfit:
                log.warning("cached checkpoint %s does not fit the model (%s); pre-training again", path, misfit)
                shutil.rmtree(path)
                model = None
            else:
                log.info("reusing pre-trained checkpoint %s", path)
        if model is None:
            with atomic_dir(path) as tmp:
                if trial.cfg.pretrain.workers > 1:
                    from kbench.distributed import pretrain_data_parallel

                    pretrain_data_parallel(trial, tmp)
                else:
                    save_checkpoint(*pretrain(trial), tmp)
            model = trial.model_cls.from_pretrained(path)
    return model.to(trial.device).eval(), json.loads((path / HISTORY_FILE).read_text())


def save_checkpoint(model: VLPreTrainedModel, history: list[dict[str, float]], directory: Path) -> None:
    """The model's weights and config, and its per-epoch curves, in ``directory``."""
    model.save_pretrained(directory)
    (directory / HISTORY_FILE).write_text(json.dumps(history, indent=1))


def pretrain(trial: Trial) -> tuple[VLPreTrainedModel, list[dict[str, float]]]:
    """Train a fresh model (or one initialised from ``model.init_from``) with its pre-training objectives."""
    cfg = trial.cfg.pretrain
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    data = trial.data("train")
    seed_everything(trial.spec.seed)  # the checkpoint must depend on its key alone, not on what ran before it
    model = build_model(trial.spec.model, trial.cfg.model.init_from, **trial.model_kwargs()).to(trial.device)
    collate = trial.model_cls.pretraining_collator(model.config, trial)
    sampler = NegativeSampler(data.split.meta["product_id"].to_numpy())
    rng = np.random.default_rng(trial.spec.seed)  # the same on every rank: all draw the same global batches
    generator = torch.Generator().manual_seed(trial.spec.seed + RANK_SEED_STRIDE * rank)
    steps_per_epoch = max(1, len(data) // cfg.batch_size)
    shard = slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)

    def batches(epoch: int):
        order = rng.permutation(len(data))
        for i in range(steps_per_epoch):
            images = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            texts, labels = sampler.sample(images, cfg.itm_negative_rate, rng)
            images, texts, labels = images[shard], texts[shard], labels[shard]
            batch = data.inputs(images, texts)
            batch["itm_labels"] = torch.from_numpy(labels)
            batch["image_positions"], batch["text_positions"] = torch.from_numpy(images), torch.from_numpy(texts)
            yield collate(batch, generator)

    # Some heads are trained only in fine-tuning (VL-BERT's ITM, a dual encoder's match bias, disabled pretext heads).
    trained = DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model

    def step(batch: dict[str, torch.Tensor]):
        out = trained(**{k: v.to(trial.device, non_blocking=True) for k, v in batch.items()})
        return out.loss, {"loss": out.loss, **out.losses, **out.accuracies}

    history = fit(trained, batches, steps_per_epoch, cfg, step, trial.device, trial.cfg.runtime.precision, "pre-train")
    return model, mean_over_ranks(history) if world > 1 else history


def mean_over_ranks(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """Each epoch's logged means averaged over the process group (every rank gets the same curves)."""
    keys = sorted(history[0]) if history else []
    values = torch.tensor([[epoch[k] for k in keys] for epoch in history], dtype=torch.float64)
    dist.all_reduce(values)
    values /= dist.get_world_size()
    return [dict(zip(keys, row.tolist(), strict=True)) for row in values]
