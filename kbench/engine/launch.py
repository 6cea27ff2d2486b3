"""Ray Tune scheduling: every trial spec is one Tune trial, on this machine or an existing Ray cluster."""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Read by Ray at import time, so set first.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray >= 2.59 prints a token-auth notice otherwise
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's verbose=0 then prints nothing; bars come from us
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray
from ray import tune
from rich.progress import Progress, TaskID

from kbench.core.config import Config
from kbench.core.errors import KbenchError
from kbench.core.paths import cache_dir
from kbench.core.progress import bar_columns
from kbench.engine.tracking import Tracking, log_metrics
from kbench.engine.trial import TrialSpec

log = logging.getLogger(__name__)

# Progress reports; not "done", which Tune reads as "the trial has finished".
STAGE, COMPLETED, TOTAL = "progress/stage", "progress/completed", "progress/total"


def configure_worker() -> None:
    """Logging of a trial's process: kbench's info lines, transformers' warnings and bars off."""
    from transformers.utils import logging as hf_logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _trainable(config: dict[str, Any], base: Config, tasks: list[str], tracking: Tracking) -> None:
    """The Tune trainable: runs one trial and reports its progress and final metrics to the driver."""
    from kbench.core import progress
    from kbench.engine.pipeline import run_trial

    configure_worker()
    progress.set_sink(lambda stage, done, total: tune.report({STAGE: stage, COMPLETED: done, TOTAL: total}))
    metrics = run_trial(TrialSpec(**config["spec"]), base, tasks, tracking)
    tune.report(metrics)


def ray_temp_dir() -> str:
    """A short directory for Ray's session files (its Unix socket paths must stay under 107 bytes)."""
    root = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    return os.path.join(root, f"kbray-{os.getuid()}")


def launch(
    specs: list[TrialSpec],
    base: Config,
    tasks: list[str],
    tracking: Tracking,
    name: str,
    ray_address: str | None = None,
) -> dict[str, dict[str, float]]:
    """Run every spec as a Ray Tune trial and return each trial's final metrics by label."""
    with ray_session(base, ray_address) as base:
        workers = base.pretrain.workers
        prepare_features(base, specs, ("train", "test"), tracking)
        resources = {"cpu": base.runtime.cpus_per_trial, "gpu": base.runtime.gpus_per_trial}
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, base=base, tasks=tasks, tracking=tracking), resources
        )
        with Progress(*bar_columns(), transient=False) as bars:
            tuner = tune.Tuner(
                trainable,
                param_space={"spec": tune.grid_search([dataclasses.asdict(s) for s in specs])},
                tune_config=tune.TuneConfig(
                    trial_name_creator=lambda t: _label(t.config),
                    max_concurrent_trials=concurrency(base) if workers > 1 else None,
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=str(cache_dir("tune")),
                    verbose=0,
                    callbacks=[_ProgressCallback(bars)],
                    failure_config=tune.FailureConfig(max_failures=base.runtime.retries),
                ),
            )
            results = tuner.fit()
    failed = [r for r in results if r.error]
    if failed:
        first = str(failed[0].error).strip().splitlines()
        message = next((line for line in reversed(first) if line.strip()), "trial failed")
        raise KbenchError(f"{len(failed)} of {len(specs)} trials failed; first: {message}")
    return {
        _label(r.config): {k: v for k, v in r.metrics.items() if "/" in k and k not in (STAGE, COMPLETED, TOTAL)}
        for r in results
    }


def prepare_features(base: Config, specs: list[TrialSpec], splits: tuple[str, ...], tracking: Tracking) -> None:
    """Extract, as Ray tasks, every feature store the trials of ``specs`` read from ``splits``, before they start;
    the extraction's time and peak memory go on the invocation's run."""
    from kbench.engine.trial import Trial
    from kbench.features.extraction import extract_with_ray

    jobs = [job for spec in specs for job in Trial(spec, base).feature_jobs(splits)]
    extraction = extract_with_ray(jobs, base.features, base.runtime)
    if extraction and tracking.parent_run_id:
        log_metrics(tracking.client(), tracking.parent_run_id, extraction)


def trial_cpus(base: Config) -> int:
    """CPUs one trial needs at its peak: a data-parallel trial keeps its own (for fine-tuning) while its
    pre-training workers hold theirs."""
    runtime, workers = base.runtime, base.pretrain.workers
    return runtime.cpus_per_trial + (runtime.cpus_per_worker * workers if workers > 1 else 0)


def concurrency(base: Config) -> int:
    """How many data-parallel trials fit the cluster at once, counting their workers: Tune only sees the
    trials' own reservations, and more trials would leave their workers waiting for CPUs forever."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // trial_cpus(base))


@contextmanager
def ray_session(base: Config, ray_address: str | None) -> Iterator[Config]:
    """Ray for one invocation: the cluster at ``ray_address`` (or ``RAY_ADDRESS``), else a local Ray with this
    machine's CPUs (at least one trial's worth); shut down on the way out. Yields ``base`` with the resources it
    can have: on a machine without GPUs a local Ray runs GPU-asking trials on the CPU (with a warning) rather than
    waiting forever; a cluster without GPUs is an error."""
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    else:
        ray.init(
            num_cpus=max(os.cpu_count() or 1, trial_cpus(base)),
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=True,
            _temp_dir=ray_temp_dir(),
        )
    try:
        yield fitted_resources(base, bool(address))
    finally:
        ray.shutdown()


def fitted_resources(base: Config, cluster: bool) -> Config:
    """``base``, or a copy asking for no GPUs when it asks for some and this machine has none (a cluster: error)."""
    if base.runtime.gpus_per_trial <= 0 or ray.cluster_resources().get("GPU", 0) > 0:
        return base
    if cluster:
        raise KbenchError(
            f"the Ray cluster has no GPUs but runtime.gpus_per_trial={base.runtime.gpus_per_trial:g}; "
            "add GPU nodes or run with --gpus-per-trial 0"
        )
    log.warning(
        "no GPU on this machine: the %s profile's trials run on the CPU (--gpus-per-trial 0 says so)", base.profile
    )
    return dataclasses.replace(base, runtime=dataclasses.replace(base.runtime, gpus_per_trial=0.0))


def _label(config: dict[str, Any]) -> str:
    return TrialSpec(**{**config["spec"], "overrides": tuple(config["spec"]["overrides"])}).label


class _ProgressCallback(tune.Callback):
    """Draws one bar per (trial, stage) from the progress the trials report."""

    def __init__(self, bars: Progress) -> None:
        self.bars: Progress | None = bars
        self.tasks: dict[tuple[str, str], TaskID] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the experiment state; the bars stay on the driver."""
        return {"bars": None, "tasks": {}}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.bars is None or STAGE not in result:
            return
        key = (trial.trial_id, result[STAGE])
        if key not in self.tasks:
            self.tasks[key] = self.bars.add_task(f"{_label(trial.config)} {result[STAGE]}", total=result[TOTAL])
        self.bars.update(self.tasks[key], completed=result[COMPLETED], total=result[TOTAL])
