"""Pre-training: the zoo entry's own objectives on the training split, checkpointed by config hash."""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
from filelock import FileLock

from kbench.batches import NegativeSampler
from kbench.paths import atomic_dir, cache_dir
from kbench.training import fit
from kbench.trial import Trial
from kbench.zoo import VLPreTrainedModel, build_model

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"


def pretrained_model(trial: Trial) -> tuple[VLPreTrainedModel, list[dict[str, float]]]:
    """The trial's pre-trained model and its per-epoch curves, trained now or loaded from the checkpoint
    that any earlier trial with the same pre-training hash left in the cache."""
    path = cache_dir("checkpoints") / f"{trial.spec.model}-{trial.pretrain_key()}"
    with FileLock(str(path) + ".lock"):
        if not (path / HISTORY_FILE).exists():
            model, history = pretrain(trial)
            with atomic_dir(path) as tmp:
                model.save_pretrained(tmp)
                (tmp / HISTORY_FILE).write_text(json.dumps(history, indent=1))
        else:
            log.info("reusing pre-trained checkpoint %s", path)
    model = trial.model_cls.from_pretrained(path).to(trial.device).eval()
    return model, json.loads((path / HISTORY_FILE).read_text())


def pretrain(trial: Trial) -> tuple[VLPreTrainedModel, list[dict[str, float]]]:
    """Train a fresh model (or one initialised from ``model.init_from``) with its pre-training objectives."""
    cfg = trial.cfg.pretrain
    data = trial.data("train")
    model = build_model(trial.spec.model, trial.cfg.model.init_from, **trial.model_kwargs()).to(trial.device)
    collate = trial.model_cls.pretraining_collator(model.config, trial)
    sampler = NegativeSampler(data.split.meta["product_id"].to_numpy())
    rng = np.random.default_rng(trial.spec.seed)
    generator = torch.Generator().manual_seed(trial.spec.seed)
    steps_per_epoch = max(1, len(data) // cfg.batch_size)

    def batches(epoch: int):
        order = rng.permutation(len(data))
        for i in range(steps_per_epoch):
            images = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            texts, labels = sampler.sample(images, cfg.itm_negative_rate, rng)
            batch = data.inputs(images, texts)
            batch["itm_labels"] = torch.from_numpy(labels)
            batch["image_positions"], batch["text_positions"] = torch.from_numpy(images), torch.from_numpy(texts)
            yield collate(batch, generator)

    def step(batch: dict[str, torch.Tensor]):
        out = model(**{k: v.to(trial.device, non_blocking=True) for k, v in batch.items()})
        return out.loss, {"loss": out.loss, **out.losses, **out.accuracies}

    history = fit(model, batches, steps_per_epoch, cfg, step, trial.device, trial.cfg.runtime.precision, "pre-train")
    return model, history
