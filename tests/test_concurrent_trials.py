"""Trials running side by side on one tracking store: each logs the same dataset as its run's input at about the same
moment (as the first trials of an invocation do), and every one of them must succeed. Real processes, a real SQLite
store."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

TRIALS = 6
ROUNDS = 4


def _log_datasets(uri: str, experiment_id: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    """One trial's run a round, each logging that round's new dataset the moment every trial is ready."""
    from kbench.engine.tracking import Tracking, TrialRun

    for round_ in range(ROUNDS):
        with TrialRun(Tracking(uri, experiment_id), "t", {"model": "m"}) as run:
            barrier.wait(timeout=60)
            run.log_dataset("synth", f"{round_:016x}", None, {"train": 10, "test": 5})


@pytest.mark.slow
def test_trials_logging_one_new_dataset_at_once_all_succeed(tmp_path: Path) -> None:
    """Six processes log one new dataset at once, four times over: every process exits 0 and every run has the
    dataset as its input, stored once. (MLflow's store inserts a dataset after looking it up, so all but one of
    the concurrent inserts broke its unique key, and Tune ran the trial again.)"""
    from mlflow.tracking import MlflowClient

    from kbench.engine.tracking import open_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = open_experiment(uri, "race")
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(TRIALS)
    procs = [spawn.Process(target=_log_datasets, args=(uri, experiment_id, barrier)) for _ in range(TRIALS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=180)
    assert [proc.exitcode for proc in procs] == [0] * TRIALS
    runs = MlflowClient(tracking_uri=uri).search_runs([experiment_id], max_results=100)
    assert len(runs) == TRIALS * ROUNDS and {r.info.status for r in runs} == {"FINISHED"}
    assert all([d.dataset.name for d in r.inputs.dataset_inputs] == ["synth"] for r in runs)
    digests = sorted(d.dataset.digest for r in runs for d in r.inputs.dataset_inputs)
    assert digests == sorted(f"{i:016x}" for i in range(ROUNDS) for _ in range(TRIALS))
