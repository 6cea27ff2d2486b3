"""One trial end to end: data, features, pre-training, the tasks, the sums, everything logged to MLflow."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import yaml

from kbench.core.config import Config
from kbench.core.memory import peak_memory
from kbench.engine.pretraining import pretrained_model
from kbench.engine.tracking import Tracking, TrialRun, flatten
from kbench.engine.trial import Trial, TrialSpec, config_key, seed_everything
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
        run.log_params({**flatten(cfg.to_dict()), "model.name": spec.model, "seed": spec.seed})
        run.log_text("config.yaml", yaml.safe_dump({"model": spec.model, "seed": spec.seed, **cfg.to_dict()}))
        with measured("data"):
            dataset = trial.dataset
            run.set_tags({"data_fingerprint": dataset.fingerprint})
        with measured("features"):
            trial.data("train"), trial.data("test")
        with measured("prepare"):
            run.log_metrics(trial.model_cls.prepare(trial.context))
        with measured("pretrain"):
            model, history = pretrained_model(trial)
        for epoch, values in enumerate(history, 1):
            run.log_metrics({f"pretrain/{k}": v for k, v in values.items()}, step=epoch)
        metrics: dict[str, float] = {}
        skipped = [t for t in tasks if not trial.model_cls.generates_text and TASKS.get(t).kind == "captioning"]
        if skipped:  # shown as "–" in the tables, as the paper does for ImageBERT's captioning
            run.set_tags({"skipped_tasks": ",".join(skipped)})
        for name in (t for t in tasks if t not in skipped):
            task = build_task(name, cfg.tasks.get(name, {}))
            seed_everything(spec.seed)  # a task's result must not depend on what ran before it (a cached checkpoint)
            with measured(name):
                result = task.run(trial.context, model)
            metrics |= {f"{name}/{k}": v for k, v in result.metrics.items()}
            run.log_metrics({f"{name}/{k}": v for k, v in result.metrics.items()})
            for epoch, values in enumerate(result.curves, 1):
                run.log_metrics({f"{name}/finetune_{k}": v for k, v in values.items()}, step=epoch)
            for filename, content in result.artifacts.items():
                run.log_text(filename, content)
            run.log_text(f"{name}.jsonl", to_jsonl(result.samples), ARTIFACT_DIR)
            if task.card.kind == "retrieval":
                run.set_tags({"protocol": f"{task.protocol.name} v{task.protocol.version}"})
        metrics |= paper_sums(metrics)
        run.log_metrics({k: v for k, v in metrics.items() if k.startswith("sums/")})
        run.log_metrics({f"time/{k}_s": v for k, v in timings.items()})
        run.log_metrics(memory)
    return metrics


@contextmanager
def measure(stage: str, timings: dict[str, float], memory: dict[str, float], device: torch.device) -> Iterator[None]:
    """The stage's wall time into ``timings`` and its peak memory (``mem/<stage>_peak_mb``...) into ``memory``."""
    start = time.perf_counter()
    with peak_memory(stage, memory, device):
        yield
    timings[stage] = time.perf_counter() - start
