"""Running a set of trials: check the inputs, open the MLflow parent run, launch the trials that have no finished
result yet, and find each trial's finished run."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from kbench.core.config import Config
from kbench.core.device import cpu_has_bf16, resolve_device
from kbench.core.errors import KbenchError
from kbench.data import load_dataset
from kbench.data.text import load_tokenizer
from kbench.engine.ablations import BLOCKS
from kbench.engine.checkpoints import check_checkpoints
from kbench.engine.preflight import (
    check_data,
    check_gpu_settings,
    check_model_sections,
    check_resources,
    check_task_bounds,
)
from kbench.engine.replay import conclude, sync
from kbench.engine.tracking import Tracking, finished_runs, open_experiment, parent_run, settle
from kbench.engine.trial import TrialSpec, config_hash, model_options, trial_config
from kbench.features.encoders import RANDOM_WEIGHTS, build_encoder
from kbench.models.zoo import MODELS, NO_INIT, bert_config, check_options
from kbench.tasks import PAPER_TASKS, build_task

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
    """Fail fast on the driver, before any trial starts: the config (``check_config``), the initial weights, then the
    data files.

    Reading the dataset here also generates SynthFashion once, before trials would race to do it.
    """
    check_config(cfg, specs, tasks)
    check_initial_weights(cfg)
    if cfg.runtime.precision == "bf16" and resolve_device(cfg.runtime.device).type == "cpu" and not cpu_has_bf16():
        log.info("runtime.precision=bf16: this CPU has no bf16 arithmetic, so trials on it compute in fp32")
    dataset = load_dataset(cfg.data)
    log.info(
        "%s: %d train, %d dev, %d test images in %s; fingerprint %s",
        dataset.name,
        len(dataset.train),
        len(dataset.dev),
        len(dataset.test),
        dataset.train.path.parent.resolve(),
        dataset.fingerprint,
    )
    check_data(dataset, cfg, specs)


def check_config(cfg: Config, specs: Sequence[TrialSpec], tasks: Sequence[str]) -> None:
    """Refuse what no trial could run, reading no data or weights: model options and their values, pre-training
    workers, task overrides; what ``kbench config`` checks too (the files a run reads it does not)."""
    for spec in specs:
        variant = trial_config(cfg, spec)
        options = model_options(variant, spec.model)
        check_options(spec.model, options)
        model_cls = MODELS.get(spec.model)
        model_cls.patching(model_cls.config_class(**options))  # the config class checks values, patching builds
    pretrain = cfg.pretrain
    if pretrain.workers < 1 or pretrain.batch_size % pretrain.workers:
        raise KbenchError(
            f"pretrain.workers must be at least 1 and divide pretrain.batch_size ({pretrain.batch_size}); "
            f"got {pretrain.workers}"
        )
    check_model_sections(cfg, specs)
    check_gpu_settings(cfg)
    for name in sorted(set(tasks) | set(cfg.tasks)):
        check_task_bounds(build_task(name, cfg.tasks.get(name, {})))


def check_initial_weights(cfg: Config) -> None:
    """The encoder's weights and the tokenizer load and the BERT checkpoint to start from exists; random weights
    (only when spelled out: ``features.weights=random``, ``model.init_from=none``) are allowed with a warning."""
    build_encoder(cfg.features.encoder, cfg.features.weights)
    if Path(cfg.data.tokenizer).is_absolute() and not Path(cfg.data.tokenizer).is_dir():  # a path, not a hub name
        raise KbenchError(f"data.tokenizer: no such directory {cfg.data.tokenizer}")
    load_tokenizer(cfg.data.tokenizer)
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


def model_specs(models: Sequence[str], seeds: Sequence[int]) -> list[TrialSpec]:
    """A trial for every (model, seed)."""
    return [TrialSpec(model, seed) for model in models for seed in seeds]


def ablation_specs(model: str, block_names: Sequence[str], seeds: Sequence[int]) -> list[TrialSpec]:
    """A trial for every (variant, seed) of the ablation blocks named."""
    MODELS.get(model)
    return [
        TrialSpec(model, seed, v.tag, v.overrides(model))
        for block in block_names
        for v in BLOCKS[block]
        for seed in seeds
    ]


def execute(
    cfg: Config,
    specs: list[TrialSpec],
    tasks: list[str],
    *,
    command: str,
    uri: str,
    experiment: str,
    ray_address: str | None = None,
    resume: bool = False,
) -> tuple[str | None, dict[str, str]]:
    """Launch ``specs`` under one MLflow parent run (with ``resume``, only those without a finished result); return
    the parent run's id (None when nothing ran) and the finished run of every spec, by label."""
    from kbench.engine.launch import launch, session

    if not specs:
        raise KbenchError("nothing to run: no seeds")
    check_inputs(cfg, specs, tasks)
    check_resources(cfg, ray_address)
    check_checkpoints([(s.model, trial_config(cfg, s)) for s in specs], uri)
    experiment_id = open_experiment(uri, experiment)
    tracking = Tracking(uri, experiment_id)
    keys = {s.label: (s.model, s.variant, config_hash(cfg, s)) for s in specs}
    todo = specs
    if resume:
        replayed, line = sync(uri)  # what an earlier invocation spooled while the store was unreachable
        if replayed:
            log.info("%s", line)
        done = settle(tracking, keys, ",".join(tasks))
        if done:
            log.info("%d of %d trials already finished: %s", len(done), len(specs), ", ".join(sorted(done)))
        todo = [s for s in specs if s.label not in done]
    if todo:
        name = f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
        tags = {"command": command, "profile": cfg.profile, "dataset": cfg.data.dataset, "invocation": name}
        tags["config_hashes"] = ",".join(sorted({keys[s.label][2] for s in todo}))  # what --resume settles it by
        params = {"trials": ",".join(s.label for s in todo), "tasks": ",".join(tasks)}
        title = invocation_name(command, specs, tasks, cfg.profile)
        # Ray first: a cluster that cannot host a trial is refused before the parent run exists.
        with session(len(todo), cfg, name, ray_address) as ray, parent_run(tracking, title, tags, params) as parent_id:
            launch(ray, todo, tasks, Tracking(uri, experiment_id, parent_id))
            # The calls trials spooled replayed, then the summary (with --resume, of the trials finished before too).
            found = conclude(uri, experiment_id, parent_id, keys, ",".join(tasks))
        return parent_id, found
    return None, finished_runs(tracking, keys, ",".join(tasks))


def invocation_name(command: str, specs: Sequence[TrialSpec], tasks: Sequence[str], profile: str) -> str:
    """The parent run's name, what the invocation ran: ``kaleido · all tasks · default · 3 seeds``,
    ``ablate kpg · kaleido · default · 1 seed``."""
    models = list(dict.fromkeys(s.model for s in specs))
    which = "all models" if len(models) > 1 and set(models) == set(MODELS.names()) else ", ".join(models)
    what = "all tasks" if set(tasks) >= set(PAPER_TASKS) else ", ".join(tasks)
    seeds = len({s.seed for s in specs})
    parts = [which, what, profile, f"{seeds} seed{'' if seeds == 1 else 's'}"]
    if command == "run":
        return " · ".join(parts)
    blocks = [b for b in dict.fromkeys(s.variant.split(":")[0] for s in specs) if b != "default"]
    head = f"{command} {', '.join(blocks)}" if blocks else command
    return " · ".join([head, which, *([] if command == "ablate" else [what]), *parts[2:]])
