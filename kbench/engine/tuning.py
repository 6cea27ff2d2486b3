"""``kbench tune``: ASHA over one task's fine-tuning recipe (learning rate, batch size, epochs, warm-up), scored on
the dev split after every epoch; the best recipe is written as a config file that ``kbench run --config`` takes.

Every sample fine-tunes the same pre-trained checkpoint (made by the first sample that needs it, or taken from an
earlier run) and is a child MLflow run of the invocation's run, with its dev metrics per epoch. Samples that ASHA
stops early are finished runs tagged with the epoch they stopped at; their dev metrics are those of that epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import RunStatus
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator
from tabulate import tabulate

from kbench.core.config import Config, OptimConfig
from kbench.core.errors import KbenchError
from kbench.core.paths import atomic_path, cache_dir
from kbench.engine.launch import Session, TrialProgress, configure_worker, fit, prepare_features, session
from kbench.engine.replay import flush
from kbench.engine.spool import parent_call, retrying, unreachable
from kbench.engine.tracking import (
    Tracking,
    TrialRun,
    log_params,
    log_parent_metrics,
    open_experiment,
    param_values,
    parent_run,
)
from kbench.engine.trial import TrialSpec, seed_everything
from kbench.tasks import build_task, include_cards

log = logging.getLogger(__name__)

SEARCHED = ("lr", "batch_size", "epochs", "warmup")
EPOCH = "epoch"  # ASHA's time attribute: one report per fine-tuning epoch
RUN_ID = "run_id"


@dataclasses.dataclass(frozen=True)
class Tuned:
    """What ``tune_recipe`` did: the report it prints and the invocation's MLflow parent run (its samples' parent)."""

    report: str
    parent_run_id: str


def search_space(recipe: OptimConfig) -> dict[str, Any]:
    """Centred on the recipe the card and profile give: the learning rate over two decades around it, half, the
    same and double the batch size and the epochs, warm-up from none to 20 % of the steps."""
    epochs = max(1, math.ceil(recipe.epochs))
    return {
        "lr": tune.loguniform(recipe.lr / 10, recipe.lr * 10),
        "batch_size": tune.choice(sorted({max(8, recipe.batch_size // 2), recipe.batch_size, recipe.batch_size * 2})),
        "epochs": tune.choice(sorted({max(1, epochs // 2), epochs, epochs * 2})),
        "warmup": tune.uniform(0.0, 0.2),
    }


def _sample(config: dict[str, Any], spec: TrialSpec, base: Config, task: str, tracking: Tracking) -> None:
    """One sample: fine-tune the pre-trained model with the sampled recipe, reporting dev metrics every epoch."""
    from kbench.engine.pretrained import pretrained_model
    from kbench.engine.trial import Trial

    configure_worker()
    seed_everything(spec.seed)
    settings = {k: config[k] for k in SEARCHED}
    overrides = tuple(f"tasks.{task}.finetune.{k}={v}" for k, v in settings.items())
    trial = Trial(dataclasses.replace(spec, overrides=spec.overrides + overrides), base)
    tags = {"model": spec.model, "search": task, "seed": spec.seed, "profile": base.profile}
    with TrialRun(tracking, describe(settings), tags) as run:
        run.log_params(settings)
        model, _ = pretrained_model(trial)

        reported = 0

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            nonlocal reported
            run.log_metrics({f"dev/{k}": v for k, v in metrics.items()}, step=epoch)
            reported = epoch
            tune.report({**metrics, EPOCH: epoch, RUN_ID: run.run_id})

        seed_everything(spec.seed)  # every sample starts fine-tuning from the same state, cached checkpoint or not
        try:
            build_task(task, trial.cfg.tasks.get(task, {})).run(trial.context, model, split="dev", on_epoch=on_epoch)
        except SystemExit:  # how Tune ends a sample at the report where ASHA stops it (or it reached max_t)
            if reported < settings["epochs"]:
                run.set_tags({"stopped_at": reported})


def describe(settings: dict[str, Any]) -> str:
    return (
        f"lr {settings['lr']:.2e}, batch {settings['batch_size']}, epochs {settings['epochs']}, "
        f"warm-up {settings['warmup']:.2f}"
    )


class _Lines(tune.Callback):
    """One line per sample and epoch on the driver's terminal."""

    def __init__(self, metric: str) -> None:
        self.metric = metric

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        print(
            f"{describe(trial.config)}: epoch {result[EPOCH]}, dev {self.metric} {result[self.metric]:.4g}", flush=True
        )


def tune_recipe(
    cfg: Config,
    model: str,
    task_name: str,
    samples: int,
    *,
    seed: int = 0,
    out: Path | None = None,
    uri: str,
    experiment: str = "kbench",
    ray_address: str | None = None,
) -> Tuned:
    """``kbench tune``: run the search, settle the samples' MLflow runs, write the best recipe; return the report
    and the parent run."""
    from kbench.engine.preflight import check_resources
    from kbench.engine.runner import check_inputs

    if "," in task_name or task_name == "all":
        raise KbenchError("kbench tune searches one task's recipe at a time: --task itr, tir, cr, sub or fc")
    if samples < 1:
        raise KbenchError("--samples must be at least 1")
    include_cards(cfg.runtime.include_paths)
    task = build_task(task_name, cfg.tasks.get(task_name, {}))
    spec = TrialSpec(model, seed)
    check_inputs(cfg, [spec], [task_name])
    check_resources(cfg, ray_address)
    metric, space = task.card.primary_metric, search_space(task.recipe)
    out = out or Path("results") / "tune" / f"{model}-{task_name}.yaml"
    tracking = Tracking(uri, open_experiment(uri, experiment))
    name = f"tune-{model}-{task_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    tags = {"command": "tune", "model": model, "search": task_name, "profile": cfg.profile}
    params = {"samples": samples, "metric": f"dev/{metric}", "scheduler": "ASHA", "space": _space_text(space)}
    with (
        session(samples, cfg, name, ray_address, noun="sample") as ray,
        parent_run(tracking, name, tags, params) as parent_id,
    ):
        child = dataclasses.replace(tracking, parent_run_id=parent_id)
        results = search(ray, spec, task_name, metric, space, samples, child)
        rows = settle_samples(child, results, metric)
        finished = [r for r in rows if r["status"] != "FAILED"]
        if not finished:
            raise KbenchError(f"all {len(rows)} samples failed; see the MLflow runs under {name}")
        # Samples that ran all their epochs first: a recipe is only as good as its last epoch.
        best = max(finished, key=lambda r: (r["status"] == "FINISHED", r[f"dev {metric}"]))
        settings = {k: best[k] for k in SEARCHED}
        usage = f"kbench run --model {model} --task {task_name} --profile {cfg.profile} --config {out}"
        header = (
            f"# kbench tune --model {model} --task {task_name} --profile {cfg.profile} --samples {samples}"
            f" --seed {seed}\n# best of {len(rows)} samples by dev {metric} ({best[f'dev {metric}']:.4g});"
            f" MLflow run {parent_id}\n# use: {usage}\n"
        )
        with atomic_path(out) as path:
            path.write_text(header + yaml.safe_dump({"tasks": {task_name: {"finetune": settings}}}, sort_keys=False))
        record_best(child, settings, {f"best/dev_{metric}": best[f"dev {metric}"]}, out)
        flush(uri, parent_id)  # what was spooled goes in the store now, or the invocation ends Spooled
    rows.sort(key=lambda r: (r["status"] != "FINISHED", -(r[f"dev {metric}"] or -math.inf)))
    table = tabulate(rows, headers="keys", tablefmt="github", floatfmt=".4g", missingval="–")
    return Tuned(f"{table}\n\nbest: {describe(settings)}\nwrote {out}; use: {usage}", parent_id)


def search(
    ray: Session, spec: TrialSpec, task: str, metric: str, space: dict[str, Any], samples: int, tracking: Tracking
) -> tune.ResultGrid:
    """``samples`` recipes from ``space`` (seeded), each a Tune trial of ``ray`` under ASHA on the dev ``metric``."""
    cfg, display = ray.base, ray.display
    display.status("extracting features")
    prepare_features(cfg, [spec], ("train", "dev"), tracking)
    display.status("starting the samples")
    resources = {"cpu": cfg.runtime.cpus_per_trial, "gpu": cfg.runtime.gpus_per_trial}
    trainable = tune.with_parameters(_sample, spec=spec, base=cfg, task=task, tracking=tracking)
    scheduler = ASHAScheduler(time_attr=EPOCH, max_t=max(space["epochs"].categories), reduction_factor=2)
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode="max",
            num_samples=samples,
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=spec.seed),
            trial_name_creator=lambda t: describe(t.config),
        ),
        run_config=tune.RunConfig(
            name=ray.name,
            storage_path=str(cache_dir("tune")),
            verbose=0,
            callbacks=[TrialProgress(display, describe), _Lines(metric)],
        ),
    )
    return fit(tuner)


def settle_samples(tracking: Tracking, results: tune.ResultGrid, metric: str) -> list[dict[str, Any]]:
    """One row per sample (FINISHED: all its epochs ran; STOPPED: ASHA stopped it; FAILED). A run left RUNNING by
    a sample whose process died is marked FAILED (when the store can be reached: else it is left as it is)."""
    client = tracking.client()
    rows = []
    for result in results:
        settings = {k: result.config[k] for k in SEARCHED}
        epoch = int(result.metrics.get(EPOCH, 0) or 0)
        run_id = result.metrics.get(RUN_ID)
        status = "FAILED" if result.error else ("FINISHED" if epoch >= settings["epochs"] else "STOPPED")
        if run_id:
            try:
                if retrying(partial(client.get_run, run_id)).info.status == "RUNNING":
                    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            except Exception as exc:
                if not unreachable(exc):
                    raise
                log.debug("tracking store %s unreachable: run %s of a sample not checked", tracking.uri, run_id)
        value = result.metrics.get(metric)
        rows.append({**settings, "stopped at": epoch, "status": status, f"dev {metric}": value})
    return rows


def record_best(tracking: Tracking, settings: dict[str, Any], metrics: dict[str, float], out: Path) -> None:
    """The best recipe on the invocation's run (``tracking``'s parent): its settings as params, its score, the
    config file; in the parent's spool if the store is unreachable."""
    client, parent_id = tracking.client(), tracking.parent_run_id
    params = param_values({f"best.{k}": v for k, v in settings.items()})
    where = (tracking.uri, tracking.experiment_id, parent_id)
    parent_call(*where, partial(log_params, client, parent_id, params), "params", params=params)
    log_parent_metrics(tracking, metrics)
    parent_call(*where, partial(client.log_artifact, parent_id, str(out)), "artifacts", files=out, directory=None)


def _space_text(space: dict[str, Any]) -> str:
    """``lr: log-uniform [1e-05, 0.001]; batch_size: one of [16, 32, 64]; ...``"""
    parts = []
    for key, domain in space.items():
        if isinstance(domain, tune.search.sample.Categorical):
            parts.append(f"{key}: one of {list(domain.categories)}")
        else:
            kind = "log-uniform" if isinstance(domain.get_sampler(), tune.search.sample.LogUniform) else "uniform"
            parts.append(f"{key}: {kind} [{domain.lower:g}, {domain.upper:g}]")
    return "; ".join(parts)
