"""``kbench ablate`` as a user meets it: a Table 4 block through real Ray and MLflow, resumed after ``kill -9``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kbench.commands.cli import main
from kbench.engine.tracking import Tracking, TrialRun, open_experiment, settle

# Fewer test items to score a trial (the smoke profile's 20 queries of 101 candidates a direction, scored before and
# after fine-tuning, and 30 captions): what is resumed and tabulated stays the same.
FEWER = ["tasks.itr.queries=5", "tasks.tir.queries=5", "tasks.fc.images=10"]


def finished_trials(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("ablate")
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], "tags.`kbench.model` = 'kaleido'")
    return [r for r in runs if r.info.status == "FINISHED"]


@pytest.mark.slow
def test_killed_ablation_resumes_to_one_result_per_variant(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["ablate", "agm", "--profile", "smoke", "--tracking-uri", uri, "--experiment", "ablate"]
    argv += [arg for item in FEWER for arg in ("--set", item)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "kbench", *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not finished_trials(uri) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
    os.killpg(first.pid, signal.SIGKILL)  # kill -9 the invocation after its first trial finished
    first.wait()
    done = finished_trials(uri)
    assert len(done) == 1, "the first trial must have finished before the kill"

    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "### Table 4: AGM ablation" in table and "| ITR R@1 " in table and "| SumCAP " in table
    runs = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name("ablate").experiment_id],
        "tags.`kbench.model` = 'kaleido'",
    )
    finished = sorted(r.data.tags["kbench.variant"] for r in runs if r.info.status == "FINISHED")
    assert finished == ["agm:agm", "agm:random"], "exactly one finished result per (variant, seed)"
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs), "no run left RUNNING"
    assert done[0].info.run_id in {r.info.run_id for r in runs if r.info.status == "FINISHED"}, "kept, not redone"

    assert main(argv) == 0  # a third invocation finds everything finished and launches nothing
    runs_after = finished_trials(uri)
    assert len(runs_after) == 2
    table_argv = ["table", "--ablation", "agm", "--format", "csv", "--tracking-uri", uri, "--experiment", "ablate"]
    assert main(table_argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-17].startswith("ITR R@1,") and lines[-1].startswith("SumCAP,")


def test_settle_tells_variants_with_one_config_apart(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = Tracking(uri, open_experiment(uri, "settle"))
    tags = {"model": "kaleido", "config_hash": "h1", "tasks": "itr,tir,cr,sub,fc"}
    with TrialRun(tracking, "full", {**tags, "variant": "kpg:kaleido+sod"}):
        pass
    left = TrialRun(tracking, "killed", {**tags, "variant": "agm:random", "config_hash": "h2"})  # never ended
    with TrialRun(tracking, "other tasks", {**tags, "variant": "agm:agm", "tasks": "itr"}):
        pass
    keys = {
        "kpg/kaleido+sod": ("kaleido", "kpg:kaleido+sod", "h1"),
        "agm/agm": ("kaleido", "agm:agm", "h1"),  # the same config as the full model, another variant
        "agm/random": ("kaleido", "agm:random", "h2"),
    }
    assert settle(tracking, keys, "itr,tir,cr,sub,fc") == {"kpg/kaleido+sod"}
    assert tracking.client().get_run(left.run_id).info.status == "KILLED"
