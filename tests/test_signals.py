"""Signals end a run one way: SIGINT, SIGTERM and SIGHUP sent to a real ``kbench run`` while its trial runs stop the
trial, mark the parent and child MLflow runs KILLED, print one line and no table, and exit with 128 + the signal;
``--resume`` after ``kill -9`` settles the parent run the killed invocation left RUNNING."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

# A CLIP trial on 20 products whose pre-training outlasts the test, so it is surely running when the signal comes.
RUN = ["run", "--model", "clip", "--task", "cr", "--profile", "smoke", "--limit", "20", "--cpus-per-trial", "1"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One KBENCH_HOME for the module, so that the features are extracted once."""
    return tmp_path_factory.mktemp("signals-home")


def start(tmp_path: Path, home: Path, *extra: str) -> subprocess.Popen:
    """``kbench run`` in its own process group (as a shell starts a job), its output in files under ``tmp_path``."""
    argv = [sys.executable, "-m", "kbench", *RUN, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *extra]
    env = {**os.environ, "KBENCH_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        return subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=err, process_group=0)


def runs(database: Path) -> list[tuple[str, str, str | None]]:
    """``(run id, status, parent run id)`` of every run in the store, read-only (kbench creates the store)."""
    if not database.exists():
        return []
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            return db.execute(
                "SELECT r.run_uuid, r.status, t.value FROM runs r LEFT JOIN tags t "
                "ON t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId'"
            ).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []


def wait_for_running_trial(run: subprocess.Popen, tmp_path: Path, timeout: float = 300) -> None:
    """Until a child run (a trial's) is RUNNING in the store."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert run.poll() is None, (tmp_path / "err.txt").read_text()[-3000:]
        if any(status == "RUNNING" and parent for _, status, parent in runs(tmp_path / "mlflow.db")):
            time.sleep(2)  # into the trial's pre-training
            return
        time.sleep(0.2)
    raise AssertionError("no trial started")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "to_group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGHUP, True)],
    ids=["SIGINT to the job (Ctrl-C)", "SIGTERM to kbench (kill)", "SIGHUP to the job (terminal closed)"],
)
def test_a_signal_stops_the_run_and_marks_its_runs_killed(
    tmp_path: Path, home: Path, signum: signal.Signals, to_group: bool
) -> None:
    run = start(tmp_path, home, "--set", "pretrain.epochs=100000", "--output-path", str(tmp_path / "results"))
    try:
        wait_for_running_trial(run, tmp_path)
        (os.killpg if to_group else os.kill)(run.pid, signum)
        status = run.wait(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    err, out = (tmp_path / "err.txt").read_text(), (tmp_path / "out.txt").read_text()
    assert status == 128 + signum, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("kbench: interrupted")]
    assert lines == [f"kbench: interrupted ({signum.name}); 1 trial stopped; rerun with --resume to continue"], err
    for crash in ("Traceback", "Error", "*** ", "Stop signal received", "pid="):
        assert crash not in err, err[-3000:]
    assert out == "", "no table of earlier runs"
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir()), "no results file"
    found = runs(tmp_path / "mlflow.db")
    assert [status for _, status, parent in found if parent is None] == ["KILLED"]
    assert [status for _, status, parent in found if parent] == ["KILLED"]


@pytest.mark.slow
def test_resume_settles_the_parent_run_a_killed_invocation_left_running(tmp_path: Path, home: Path) -> None:
    """``kill -9`` of the whole job leaves its parent and trial runs RUNNING; ``--resume`` marks both KILLED, says
    so in one line, and runs the trial again under a parent run of its own."""
    settings = ["--set", "pretrain.epochs=60"]
    run = start(tmp_path, home, *settings)
    try:
        wait_for_running_trial(run, tmp_path)
        os.killpg(run.pid, signal.SIGKILL)  # Ray's processes too; its trial process ends with its raylet
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    killed = runs(tmp_path / "mlflow.db")
    assert sorted(status for _, status, _ in killed) == ["RUNNING", "RUNNING"]

    resumed = start(tmp_path, home, *settings, "--resume")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "err.txt").read_text()[-3000:]
    err = (tmp_path / "err.txt").read_text()
    settled = [line for line in err.splitlines() if line.startswith("marked KILLED")]
    assert len(settled) == 1 and "clip · cr · smoke · 1 seed" in settled[0], err
    found = {run_id: status for run_id, status, _ in runs(tmp_path / "mlflow.db")}
    assert [found[run_id] for run_id, _, _ in killed] == ["KILLED", "KILLED"]
    assert sorted(found.values()) == ["FINISHED", "FINISHED", "KILLED", "KILLED"]
