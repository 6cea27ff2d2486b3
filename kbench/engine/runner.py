"""``kbench run`` and ``kbench ablate``: check the inputs, open the MLflow parent run, launch the trials that
have no finished result yet, print the tables."""

from __future__ import annotations

import argparse
import logging
import time

from kbench.commands.cli import resolve_config
from kbench.core.config import Config
from kbench.core.errors import KbenchError
from kbench.data import load_dataset
from kbench.engine.ablations import BLOCKS, blocks
from kbench.engine.tracking import Tracking, open_experiment, parent_run, settle, tracking_uri
from kbench.engine.trial import TrialSpec, config_hash, model_options, trial_config
from kbench.features.encoders import RANDOM_WEIGHTS, build_encoder
from kbench.models.kaleido.saliency import build_detector
from kbench.models.training import cpu_has_bf16, resolve_device
from kbench.models.zoo import MODELS, NO_INIT, bert_config, check_options
from kbench.tasks import build_task, parse_tasks

log = logging.getLogger(__name__)


def parse_models(spec: str) -> list[str]:
    """``all`` or a comma-separated list of zoo entries."""
    names = MODELS.names() if spec == "all" else [m.strip() for m in spec.split(",") if m.strip()]
    if not names:
        raise KbenchError("--model needs at least one zoo entry, or all")
    for name in names:
        MODELS.get(name)
    return names


def check_inputs(cfg: Config, specs: list[TrialSpec], tasks: list[str]) -> None:
    """Fail fast on the driver, before any trial starts: model options, task overrides, the data files.

    Reading the dataset here also generates SynthFashion once, before trials would race to do it.
    """
    for spec in specs:
        variant = trial_config(cfg, spec)
        options = model_options(variant, spec.model)
        check_options(spec.model, options)
        model_cls = MODELS.get(spec.model)
        patching = model_cls.patching(model_cls.config_class(**options))  # the config class checks the values
        if patching.saliency:
            build_detector(patching.saliency)
    pretrain = cfg.pretrain
    if pretrain.workers < 1 or pretrain.batch_size % pretrain.workers:
        raise KbenchError(
            f"pretrain.workers must be at least 1 and divide pretrain.batch_size ({pretrain.batch_size}); "
            f"got {pretrain.workers}"
        )
    for name in sorted(set(tasks) | set(cfg.tasks)):
        build_task(name, cfg.tasks.get(name, {}))
    check_initial_weights(cfg)
    if cfg.runtime.precision == "bf16" and resolve_device(cfg.runtime.device).type == "cpu" and not cpu_has_bf16():
        log.info("runtime.precision=bf16: this CPU has no bf16 arithmetic, so trials on it compute in fp32")
    dataset = load_dataset(cfg.data)
    log.info(
        "%s: %d train, %d dev, %d test images; fingerprint %s",
        dataset.name,
        len(dataset.train),
        len(dataset.dev),
        len(dataset.test),
        dataset.fingerprint,
    )


def check_initial_weights(cfg: Config) -> None:
    """The encoder's weights load and the BERT checkpoint to start from exists; random ones (only when spelled
    out: ``features.weights=random``, ``model.init_from=none``) are allowed with a warning."""
    build_encoder(cfg.features.encoder, cfg.features.weights)
    if cfg.features.weights == RANDOM_WEIGHTS:
        log.warning(
            "features.weights=%s: the %s encoder has random weights; the numbers only show that the code path runs",
            RANDOM_WEIGHTS,
            cfg.features.encoder,
        )
    if cfg.model.init_from == NO_INIT:
        log.warning(
            "model.init_from=%s: the transformer starts from random weights, not from a BERT checkpoint", NO_INIT
        )
    elif cfg.model.init_from:
        bert_config(cfg.model.init_from)


def seeds(opts: argparse.Namespace) -> range:
    """``--seeds`` consecutive seeds from ``--seed`` on."""
    if opts.seeds < 1:
        raise KbenchError("--seeds must be at least 1")
    return range(opts.seed, opts.seed + opts.seeds)


def execute(opts: argparse.Namespace, cfg: Config, specs: list[TrialSpec], tasks: list[str], resume: bool) -> None:
    """Launch ``specs`` under one MLflow parent run; with ``resume``, only those without a finished result."""
    from kbench.engine.launch import launch

    check_inputs(cfg, specs, tasks)
    uri = tracking_uri(opts.tracking_uri)
    experiment_id = open_experiment(uri, opts.experiment)
    if resume:
        keys = {s.label: (s.model, s.variant, config_hash(cfg, s)) for s in specs}
        done = settle(Tracking(uri, experiment_id), keys, ",".join(tasks))
        if done:
            log.info("%d of %d trials already finished: %s", len(done), len(specs), ", ".join(sorted(done)))
        specs = [s for s in specs if s.label not in done]
    if not specs:
        return
    name = f"{opts.command}-{time.strftime('%Y%m%d-%H%M%S')}"
    tags = {"command": opts.command, "profile": cfg.profile, "dataset": cfg.data.dataset}
    params = {"trials": ",".join(s.label for s in specs), "tasks": ",".join(tasks)}
    with parent_run(Tracking(uri, experiment_id), name, tags, params) as parent_id:
        launch(specs, cfg, tasks, Tracking(uri, experiment_id, parent_id), name, opts.ray_address)


def run(opts: argparse.Namespace) -> str:
    """``kbench run``: every (model, seed) as a Ray Tune trial; return the main table."""
    from kbench.report.tables import build_main

    cfg = resolve_config(opts)
    models, tasks = parse_models(opts.model), parse_tasks(opts.task)
    specs = [TrialSpec(model, seed) for model in models for seed in seeds(opts)]
    execute(opts, cfg, specs, tasks, resume=opts.resume)
    uri = tracking_uri(opts.tracking_uri)
    return build_main(uri, opts.experiment, "md", cfg.profile, cfg.data.dataset, cfg.data.limit)


def ablate(opts: argparse.Namespace) -> str:
    """``kbench ablate``: every (variant, seed) of the blocks asked for, finished ones skipped; their tables."""
    from kbench.report.tables import build_ablation

    cfg = resolve_config(opts)
    names, tasks = blocks(opts.block), parse_tasks("all")
    MODELS.get(opts.model)
    specs = [
        TrialSpec(opts.model, seed, v.tag, v.overrides(opts.model))
        for block in names
        for v in BLOCKS[block]
        for seed in seeds(opts)
    ]
    execute(opts, cfg, specs, tasks, resume=True)
    uri = tracking_uri(opts.tracking_uri)
    return "\n".join(
        build_ablation(uri, opts.experiment, block, "md", cfg.profile, cfg.data.dataset, opts.model, cfg.data.limit)
        for block in names
    )
