"""One trial end to end: data, features, pre-training, the tasks, the sums, everything logged to MLflow."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

from kbench.core.config import Config
from kbench.core.memory import peak_memory
from kbench.engine.checkpoints import MODEL_ARTIFACT, given_model, source_of
from kbench.engine.heatmaps import confusion_figure
from kbench.engine.pretrained import pretrained_model
from kbench.engine.pretraining import save_checkpoint
from kbench.engine.tracking import Tracking, TrialRun, flatten
from kbench.engine.trial import Trial, TrialSpec, config_key, option_params, seed_everything
from kbench.metrics import paper_sums
from kbench.tasks import TASKS, build_task
from kbench.tasks.samples import ARTIFACT_DIR, to_jsonl


def run_trial(spec: TrialSpec, base: Config, tasks: list[str], tracking: Tracking) -> dict[str, float]:
    """Run ``spec`` through every stage and return its metrics (as logged: ``task/metric``)."""
    seed_everything(spec.seed)
    trial = Trial(spec, base)
    cfg = trial.cfg
    tags = {
        "model": spec.model,
        "variant": spec.variant,
        "ablation": spec.variant.split(":")[0] if ":" in spec.variant else "none",
        "seed": spec.seed,
        "profile": cfg.profile,
        "dataset": cfg.data.dataset,
        "config_hash": trial.config_hash,
        "config_key": config_key(base, spec),  # the same without the seed: what tables group seeds by
        "tasks": ",".join(tasks),
        "task_versions": ",".join(f"{t}=v{TASKS.get(t).version}" for t in tasks),
        **({"limit": cfg.data.limit} if cfg.data.limit else {}),  # tables never mix limited runs with full ones
    }
    timings: dict[str, float] = {}
    memory: dict[str, float] = {}

    def measured(stage: str) -> contextlib.AbstractContextManager:
        return measure(stage, timings, memory, trial.device)

    with TrialRun(tracking, spec.label, tags) as run:
        params = {k: v for k, v in flatten(cfg.to_dict()).items() if k != "models"}  # "models: {}" by default
        run.log_params({**params, **option_params(cfg, spec.model), "model.name": spec.model, "seed": spec.seed})
        run.log_text("config.yaml", yaml.safe_dump({"model": spec.model, "seed": spec.seed, **cfg.to_dict()}))
        with measured("data"):
            dataset = trial.dataset
            run.set_tags({"data_fingerprint": dataset.fingerprint})
            sizes = {split: len(getattr(dataset, split)) for split in ("train", "dev", "test")}
            run.log_dataset(dataset.name, dataset.fingerprint, cfg.data.data_dir, sizes)
        with measured("features"):
            trial.data("train"), trial.data("test")
        run.log_params(hash_params(trial))
        checkpoint = cfg.model.checkpoint
        if checkpoint:
            run.set_tags({"checkpoint": source_of(checkpoint)})
        with measured("prepare"):
            if not checkpoint:  # what pre-training needs (alignments, a codebook); given weights need none of it
                run.log_metrics(trial.model_cls.prepare(trial.model_config(), trial.context))
        with measured("pretrain"):
            if checkpoint:
                model, history = given_model(spec.model, checkpoint, tracking.uri, trial.device), []
            else:
                model, history = pretrained_model(trial)
        with tempfile.TemporaryDirectory() as tmp:  # the pre-trained model, loadable as runs:/<run_id>/model
            save_checkpoint(model, history, Path(tmp))
            run.log_artifacts(tmp, MODEL_ARTIFACT)
            run.log_model(tmp, MODEL_ARTIFACT, option_params(cfg, spec.model))
        for epoch, values in enumerate(history, 1):
            run.log_metrics({f"pretrain/{k}": v for k, v in values.items()}, step=epoch)
        metrics: dict[str, float] = {}
        # Captioning needs an MLM head; classification has no pre-trained head to score without fine-tuning.
        unscored = {"captioning": not trial.model_cls.generates_text, "classification": not cfg.finetune}
        skipped = [t for t in tasks if unscored.get(TASKS.get(t).kind)]
        if skipped:  # shown as "–" in the tables, as the paper does for ImageBERT's captioning
            run.set_tags({"skipped_tasks": ",".join(skipped)})
        if not cfg.finetune:
            run.set_tags({"finetune": "false"})
        for name in (t for t in tasks if t not in skipped):
            task = build_task(name, task_overrides(cfg, name))
            seed_everything(spec.seed)  # a task's result must not depend on what ran before it (a cached checkpoint)
            with measured(name):
                result = task.run(trial.context, model)
            metrics |= {f"{name}/{k}": v for k, v in result.metrics.items()}
            run.log_metrics({f"{name}/{k}": v for k, v in result.metrics.items()})
            for epoch, values in enumerate(result.curves, 1):
                run.log_metrics({f"{name}/finetune_{k}": v for k, v in values.items()}, step=epoch)
            for filename, content in result.artifacts.items():
                run.log_text(filename, content)
                if filename.startswith("confusion_") and filename.endswith(".csv"):
                    run.log_image(filename.replace(".csv", ".png"), confusion_figure(content, f"{name}: {spec.label}"))
            run.log_text(f"{name}.jsonl", to_jsonl(result.samples), ARTIFACT_DIR)
            if task.card.kind == "retrieval":
                run.set_tags({"protocol": f"{task.protocol.name} v{task.protocol.version}"})
        metrics |= paper_sums(metrics)
        run.log_metrics({k: v for k, v in metrics.items() if k.startswith("sums/")})
        run.log_metrics({f"time/{k}_s": v for k, v in timings.items()})
        run.log_metrics(memory)
    return metrics


def hash_params(trial: Trial) -> dict[str, str]:
    """The trial's hashes as params (runs filter by params): config (with and without the seed), data, checkpoint."""
    params = {"hash.config": trial.config_hash, "hash.config_key": config_key(trial.base, trial.spec)}
    params["hash.data"] = trial.dataset.fingerprint
    if not trial.cfg.model.checkpoint:  # a given checkpoint is named by the kbench.checkpoint tag
        params["hash.checkpoint"] = trial.pretrain_key()
    return params


def task_overrides(cfg: Config, name: str) -> dict:
    """The config's ``tasks.<name>`` overrides; without fine-tuning, a recipe of no epochs (the pre-trained heads)."""
    overrides = cfg.tasks.get(name, {})
    if cfg.finetune:
        return overrides
    return {**overrides, "finetune": {**overrides.get("finetune", {}), "epochs": 0}}


@contextmanager
def measure(stage: str, timings: dict[str, float], memory: dict[str, float], device: torch.device) -> Iterator[None]:
    """The stage's wall time into ``timings`` and its peak memory (``mem/<stage>_peak_mb``...) into ``memory``."""
    start = time.perf_counter()
    with peak_memory(stage, memory, device):
        yield
    timings[stage] = time.perf_counter() - start
