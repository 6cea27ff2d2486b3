"""``kbench run``: check the inputs, open the MLflow parent run, launch the trials, print the main table."""

from __future__ import annotations

import argparse
import logging
import time

from kbench.cli import resolve_config
from kbench.config import Config
from kbench.data import load_dataset
from kbench.errors import KbenchError
from kbench.kaleido.saliency import build_detector
from kbench.tasks import build_task, parse_tasks
from kbench.tracking import Tracking, open_experiment, parent_run, tracking_uri
from kbench.trial import TrialSpec, model_options
from kbench.zoo import MODELS, check_options

log = logging.getLogger(__name__)


def parse_models(spec: str) -> list[str]:
    """``all`` or a comma-separated list of zoo entries."""
    names = MODELS.names() if spec == "all" else [m.strip() for m in spec.split(",") if m.strip()]
    if not names:
        raise KbenchError("--model needs at least one zoo entry, or all")
    for name in names:
        MODELS.get(name)
    return names


def check_inputs(cfg: Config, models: list[str], tasks: list[str]) -> None:
    """Fail fast on the driver, before any trial starts: model options, task overrides, the data files.

    Reading the dataset here also generates SynthFashion once, before trials would race to do it.
    """
    for model in models:
        check_options(model, model_options(cfg, model))
        model_cls = MODELS.get(model)
        patching = model_cls.patching(model_cls.config_class(**model_options(cfg, model)))  # checks the values
        if patching.saliency:
            build_detector(patching.saliency)
    for name in sorted(set(tasks) | set(cfg.tasks)):
        build_task(name, cfg.tasks.get(name, {}))
    dataset = load_dataset(cfg.data)
    log.info(
        "%s: %d train, %d dev, %d test images; fingerprint %s",
        dataset.name,
        len(dataset.train),
        len(dataset.dev),
        len(dataset.test),
        dataset.fingerprint,
    )


def run(opts: argparse.Namespace) -> str:
    """Run every (model, seed) as a Ray Tune trial under one MLflow parent run; return the main table."""
    from kbench.launch import launch
    from kbench.tables import build_main

    cfg = resolve_config(opts)
    models, tasks = parse_models(opts.model), parse_tasks(opts.task)
    if opts.seeds < 1:
        raise KbenchError("--seeds must be at least 1")
    check_inputs(cfg, models, tasks)
    seeds = range(opts.seed, opts.seed + opts.seeds)
    specs = [TrialSpec(model, seed) for model in models for seed in seeds]
    uri = tracking_uri(opts.tracking_uri)
    experiment_id = open_experiment(uri, opts.experiment)
    name = f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    tags = {"command": "run", "profile": cfg.profile, "dataset": cfg.data.dataset}
    params = {"models": ",".join(models), "tasks": ",".join(tasks), "seeds": ",".join(map(str, seeds))}
    with parent_run(Tracking(uri, experiment_id), name, tags, params) as parent_id:
        launch(specs, cfg, tasks, Tracking(uri, experiment_id, parent_id), name, opts.ray_address)
    return build_main(uri, opts.experiment, "md", cfg.profile, cfg.data.dataset)
