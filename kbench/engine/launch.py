"""Ray Tune scheduling: every trial spec is one Tune trial, on this machine or an existing Ray cluster."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# Read by Ray at import time, so set first.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray >= 2.59 prints a token-auth notice otherwise
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's verbose=0 then prints nothing; bars come from us
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # kbench's handlers stop Tune on SIGINT, SIGTERM and SIGHUP alike

import ray
from ray import tune
from ray._private import ray_constants

from kbench.core import interrupts, progress
from kbench.core.config import Config
from kbench.core.errors import KbenchError
from kbench.core.paths import cache_dir
from kbench.core.progress import RunProgress
from kbench.engine.preflight import check_cluster_resources, trial_cpus
from kbench.engine.tracking import Tracking, log_parent_metrics
from kbench.engine.trial import TrialSpec

log = logging.getLogger(__name__)

_RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's nodes take 127.0.0.1 as their address

# Progress reports; not "done", which Tune reads as "the trial has finished".
STAGE, COMPLETED, TOTAL = "progress/stage", "progress/completed", "progress/total"
USER_ERROR = "trial/user_error"  # a trial's KbenchError, reported rather than raised: retrying cannot mend it


def configure_worker() -> None:
    """Logging of a trial's process: kbench's info lines, transformers' warnings and bars off."""
    from transformers.utils import logging as hf_logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _trainable(config: dict[str, Any], base: Config, tasks: list[str], tracking: Tracking) -> None:
    """The Tune trainable: runs one trial and reports its progress and final metrics to the driver. A user error (a
    full disk, a bad path) is reported as ``USER_ERROR``, so that Tune does not run the trial again for nothing;
    crashes and lost nodes raise, and are retried ``runtime.retries`` times."""
    from kbench.engine.pipeline import run_trial

    configure_worker()
    progress.set_sink(lambda stage, done, total: tune.report({STAGE: stage, COMPLETED: done, TOTAL: total}))
    try:
        metrics = run_trial(TrialSpec(**config["spec"]), base, tasks, tracking)
    except KbenchError as exc:
        tune.report({USER_ERROR: str(exc)})
        return
    tune.report(metrics)


def ray_temp_dir() -> str:
    """A short directory for Ray's session files (its Unix socket paths must stay under 107 bytes)."""
    root = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    return os.path.join(root, f"kbray-{os.getuid()}")


@dataclasses.dataclass(frozen=True)
class Session:
    """Ray joined for one invocation: ``base`` with the resources its trials can have, the display of its trials and
    the invocation's name (its Tune directory)."""

    base: Config
    display: RunProgress
    name: str


@contextmanager
def session(
    trials: int, base: Config, name: str, ray_address: str | None = None, noun: str = "trial"
) -> Iterator[Session]:
    """The display of ``trials`` trials (or samples: ``noun``) and Ray (``ray_session``), entered before the
    invocation's parent run opens: a cluster with no node that can host a trial is refused before any run exists."""
    with RunProgress(trials, noun=noun) as display:
        display.status("starting Ray")
        with ray_session(base, ray_address, run_log(name)) as fitted:
            yield Session(fitted, display, name)


def launch(
    session: Session, specs: list[TrialSpec], tasks: list[str], tracking: Tracking
) -> dict[str, dict[str, float]]:
    """Run every spec as a Ray Tune trial of ``session`` and return each trial's final metrics by label."""
    base, display = session.base, session.display
    display.status("extracting features")
    prepare_features(base, specs, ("train", "test"), tracking)
    display.status("starting the trials")
    resources = {"cpu": base.runtime.cpus_per_trial, "gpu": base.runtime.gpus_per_trial}
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, base=base, tasks=tasks, tracking=tracking), resources
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"spec": tune.grid_search([dataclasses.asdict(s) for s in specs])},
        tune_config=tune.TuneConfig(
            trial_name_creator=lambda t: _label(t.config),
            max_concurrent_trials=concurrency(base) if base.pretrain.workers > 1 else None,
        ),
        run_config=tune.RunConfig(
            name=session.name,
            storage_path=str(cache_dir("tune")),
            verbose=0,
            callbacks=[TrialProgress(display, _label)],
            failure_config=tune.FailureConfig(max_failures=base.runtime.retries),
        ),
    )
    try:
        results = fit(tuner)
    finally:
        ray.shutdown()  # no trial process outlives the trials, while the parent run is settled
    failed = [r for r in results if r.error or USER_ERROR in r.metrics]
    if failed:
        first = failed[0].metrics.get(USER_ERROR) or trial_error(failed[0].error)
        raise KbenchError(f"{len(failed)} of {len(specs)} trials failed; first: {first}")
    return {
        _label(r.config): {k: v for k, v in r.metrics.items() if "/" in k and k not in (STAGE, COMPLETED, TOTAL)}
        for r in results
    }


def fit(tuner: tune.Tuner) -> tune.ResultGrid:
    """``tuner.fit()``; a signal meanwhile stops the experiment as Tune's own stop does (its trials stopped, its
    state saved), then raises ``Interrupted``."""
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # Tune installs its stop handler here once its loop starts
    with interrupts.stopping(_stop_tune):
        return tuner.fit()


def _stop_tune() -> bool:
    """Ask the running Tune loop to stop; False before it has started."""
    handler = signal.getsignal(signal.SIGUSR1)
    if not callable(handler):
        return False
    handler(signal.SIGUSR1, None)
    return True


def prepare_features(base: Config, specs: list[TrialSpec], splits: tuple[str, ...], tracking: Tracking) -> None:
    """Extract, as Ray tasks, every feature store the trials of ``specs`` read from ``splits``, before they start;
    the extraction's time and peak memory go on the invocation's run."""
    from kbench.engine.trial import Trial
    from kbench.features.extraction import extract_with_ray

    jobs = [job for spec in specs for job in Trial(spec, base).feature_jobs(splits)]
    extraction = extract_with_ray(jobs, base.features, base.runtime)
    if extraction and tracking.parent_run_id:
        log_parent_metrics(tracking, extraction)


def concurrency(base: Config) -> int:
    """How many data-parallel trials fit the cluster at once, counting their workers: Tune only sees the
    trials' own reservations, and more trials would leave their workers waiting for CPUs forever."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // trial_cpus(base))


def run_log(name: str) -> Path:
    """The log file of the invocation ``name``: its Tune directory's ``output.log``."""
    return cache_dir("tune") / name / "output.log"


@contextmanager
def ray_session(base: Config, ray_address: str | None, log: Path) -> Iterator[Config]:
    """Ray for one invocation: the cluster at ``ray_address`` (or ``RAY_ADDRESS``), else a local Ray with this
    machine's CPUs (at least one trial's worth); shut down on the way out. Yields ``base`` with the resources it
    can have: on a machine without GPUs a local Ray runs GPU-asking trials on the CPU (with a warning) rather than
    waiting forever; a cluster without GPUs is an error. Ray's and the workers' output goes to ``log``, unless
    ``--verbose``."""
    address = ray_address or os.environ.get("RAY_ADDRESS")
    with worker_output(log) as divert:
        try:
            # A signal ends the run through kbench's handlers, not Ray's (exit 1, a crash dump).
            with interrupts.kept(), interrupts.hangup_deferred():
                if address:
                    ray.init(address=address, log_to_driver=True, configure_logging=False)
                else:
                    with loopback_only():
                        ray.init(
                            num_cpus=max(os.cpu_count() or 1, trial_cpus(base)),
                            include_dashboard=False,
                            configure_logging=False,
                            log_to_driver=True,
                            _temp_dir=ray_temp_dir(),
                        )
            divert()
            yield fitted_resources(base, bool(address))
        finally:
            ray.shutdown()


@contextmanager
def loopback_only() -> Iterator[None]:
    """A local Ray started in the block listens on 127.0.0.1 only, not on every address (its auth is off): Ray's
    single-machine mode, read by this process (a constant, set when Ray was imported) and by the Ray processes it
    starts (their environment). Undone afterwards, so that a later ``ray.init(address=...)`` still reaches a cluster.
    """
    saved_env, saved_flag = os.environ.get(_RAY_CLUSTER_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_RAY_CLUSTER_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_RAY_CLUSTER_ENV, None)
        else:
            os.environ[_RAY_CLUSTER_ENV] = saved_env


@contextmanager
def worker_output(log: Path) -> Iterator[Callable[[], None]]:
    """Unless ``--verbose``: Ray's log lines and, once the yielded function is called after ``ray.init``, what
    Ray's workers print (each line as ``(_trainable pid=...) ...``) go to ``log``, named once on the terminal."""
    if progress.verbose():
        yield lambda: None
        return
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    log.parent.mkdir(parents=True, exist_ok=True)
    ray_logger = logging.getLogger("ray")
    with log.open("a", buffering=1) as out:
        to_file = logging.StreamHandler(out)
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers, ray_logger.handlers = ray_logger.handlers, [to_file]

        def divert() -> None:
            dispatcher.remove_handler("ray_print_logs")  # ray.init's printer of the workers' lines
            dispatcher.add_handler("kbench_log", functools.partial(_write_worker_lines, out))
            ray_logger.handlers = [to_file]  # ray.init drops it, and Tune's warnings would reach the terminal

        print(f"kbench: Ray's and the trials' output goes to {log} (--verbose shows it here)", file=sys.stderr)
        try:
            yield divert
        finally:
            dispatcher.remove_handler("kbench_log")
            ray_logger.handlers = handlers


def _write_worker_lines(out: IO[str], data: dict[str, Any]) -> None:
    """One batch of a Ray worker's output lines, prefixed as Ray prefixes them on the terminal; not the
    autoscaler's status reports, which Ray does not print either."""
    if data.get("pid") == "autoscaler":
        return
    name = data.get("actor_name") or data.get("task_name") or ""
    prefix = f"({name} pid={data.get('pid')}) ".replace("( ", "(")
    out.writelines(f"{prefix}{line}\n" for line in data.get("lines", []))


def fitted_resources(base: Config, cluster: bool) -> Config:
    """``base``, or a copy asking for no GPUs when it asks for some and this machine has none; a cluster none of
    whose nodes can give a trial what it asks for is an error (the driver checked a local Ray's before it started)."""
    if cluster:
        check_cluster_resources(base, [node["Resources"] for node in ray.nodes() if node["Alive"]])
    if base.runtime.gpus_per_trial <= 0 or ray.cluster_resources().get("GPU", 0) > 0:
        return base
    log.warning(
        "no GPU on this machine: the %s profile's trials run on the CPU (--gpus-per-trial 0 says so)", base.profile
    )
    return dataclasses.replace(base, runtime=dataclasses.replace(base.runtime, gpus_per_trial=0.0))


def _label(config: dict[str, Any]) -> str:
    return TrialSpec(**{**config["spec"], "overrides": tuple(config["spec"]["overrides"])}).label


def trial_error(error: BaseException) -> str:
    """The line a failed trial's error comes down to: a KbenchError's own message (a user error found inside the
    trial), else the last line of Ray's report."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, KbenchError):
        return str(cause)
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "trial failed"
    return last.removeprefix(f"{KbenchError.__module__}.{KbenchError.__qualname__}: ")


class TrialProgress(tune.Callback):
    """Feeds the run's display from Tune: trials starting, the stage progress they report, trials ending."""

    def __init__(self, display: RunProgress, label: Callable[[dict[str, Any]], str]) -> None:
        self.display: RunProgress | None = display
        self.label = label

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the experiment state; the display stays on the driver."""
        return {"display": None, "label": self.label}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.display is not None:
            self.display.started(trial.trial_id, self.label(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.display is not None and STAGE in result:
            label = self.label(trial.config)
            self.display.stage(trial.trial_id, label, result[STAGE], result[COMPLETED], result[TOTAL])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.display is not None:
            failed = USER_ERROR in (trial.last_result or {})
            self.display.finished(trial.trial_id, self.label(trial.config), failed=failed)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.display is not None:
            self.display.finished(trial.trial_id, self.label(trial.config), failed=True)
