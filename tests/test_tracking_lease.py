"""``--resume``'s settling of RUNNING parent runs respects a live invocation's lease (its heartbeat), and still ends
those a killed invocation left behind."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_plots_ui import free_port

import kbench.engine.tracking as tracking_module
from kbench.core.errors import KbenchError
from kbench.engine.tracking import Tracking, TrialRun, open_experiment, parent_run, settle

HEARTBEAT, OWNER = "kbench.heartbeat", "kbench.owner"  # a parent run's lease: when it last beat, and whose it is

KEYS = {"clip": ("clip", "default", "h1")}
TAGS = {"command": "run", "config_hashes": "h1"}
TRIAL = {"model": "clip", "tasks": "cr"}


def test_settle_spares_a_live_invocation_and_ends_stale_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parent runs left RUNNING without a heartbeat, with an old one, or by a process gone from this host are
    KILLED; the open parent run of a live invocation (its heartbeat refreshed while it runs) and its trial are not."""
    monkeypatch.setattr(tracking_module, "HEARTBEAT_S", 0.2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = Tracking(uri, open_experiment(uri, "lease"))
    client = MlflowClient(tracking_uri=uri)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = int(time.time())
    stale = {
        "old": {},  # an older kbench's run: no heartbeat
        "silent": {HEARTBEAT: str(now - 3600), OWNER: "elsewhere 1"},
        "gone": {HEARTBEAT: str(now), OWNER: f"{socket.gethostname()} {dead.stdout.strip()}"},
    }
    for name, tags in stale.items():
        run = client.create_run(tracking.experiment_id, run_name=name, tags={"kbench.config_hashes": "h1", **tags})
        client.log_param(run.info.run_id, "tasks", "cr")
    live = parent_run(tracking, "live", TAGS, {"tasks": "cr"})
    with live as live_id, TrialRun(Tracking(uri, tracking.experiment_id, live_id), "clip", TRIAL) as trial:
        trial.set_tags({"variant": "default", "config_hash": "h1"})
        client.set_tag(live_id, HEARTBEAT, "0")
        assert wait_for(lambda: client.get_run(live_id).data.tags[HEARTBEAT] != "0")  # refreshed by the invocation
        assert settle(tracking, KEYS, "cr") == set()
        runs = {r.info.run_name: r.info.status for r in client.search_runs([tracking.experiment_id])}
        assert runs == {"old": "KILLED", "silent": "KILLED", "gone": "KILLED", "live": "RUNNING", "clip": "RUNNING"}
    assert client.get_run(live_id).info.status == "FINISHED"


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_resume_without_its_store_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no server at the tracking URI the invocation's experiment is pending, and ``settle`` cannot tell the
    finished trials: a user error, not MLflow's traceback."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    tracking = Tracking(uri, open_experiment(uri, "lease"))
    with pytest.raises(KbenchError, match=f"^--resume needs the tracking store {uri} to tell finished trials"):
        settle(tracking, KEYS, "cr")
