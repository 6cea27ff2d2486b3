"""Data-parallel pre-training: one trial's pre-training spread over Ray Train workers with DDP.

Each worker rebuilds the trial from its spec and base config (features and alignments come from the
cache), joins the process group Ray Train sets up, and runs ``pretrain`` on its slice of every batch, saving
and resuming the training state together with the others; rank 0's model is reported as a Ray Train checkpoint
and copied into the trial's checkpoint directory.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
from ray.train.torch import TorchTrainer

from kbench.core.paths import cache_dir
from kbench.engine.pretraining import pretrain, save_checkpoint, training_state
from kbench.engine.trial import Trial


def pretrain_data_parallel(trial: Trial, out: Path) -> None:
    """Pre-train ``trial`` over ``pretrain.workers`` Ray Train workers and write the checkpoint into ``out``."""
    runtime = trial.cfg.runtime
    use_gpu = runtime.gpus_per_trial > 0
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"spec": trial.spec, "base": trial.base},
        scaling_config=ray.train.ScalingConfig(
            num_workers=trial.cfg.pretrain.workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": runtime.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=f"pretrain-{trial.spec.model}-{trial.pretrain_key()}",
            storage_path=str(cache_dir("train")),
        ),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as checkpoint:
        shutil.copytree(checkpoint, out, dirs_exist_ok=True)
    shutil.rmtree(result.path, ignore_errors=True)  # the copy in the checkpoint cache is the one kept


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: its share of every pre-training step; rank 0 reports the checkpoint."""
    trial = Trial(config["spec"], config["base"])
    trial.device = ray.train.torch.get_device()
    model, history = pretrain(trial, training_state(trial))
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({"epochs": len(history)})
        return
    with tempfile.TemporaryDirectory(prefix="kbench-ddp-") as tmp:
        save_checkpoint(model, history, Path(tmp))
        ray.train.report({"epochs": len(history)}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
