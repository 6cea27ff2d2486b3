"""Tracking through faults: a tracking server that goes away mid-run (the runs go on in a local spool, which
``kbench sync`` replays exactly once), and invocations creating one new SQLite store at the same time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from test_plots_ui import free_port, wait_for_ok

from kbench.commands.cli import main
from kbench.engine.replay import conclude
from kbench.engine.spool import Spooled
from kbench.engine.tracking import Tracking, TrialRun, open_experiment, parent_run

# A request to a server that is gone fails at once rather than after MLflow's minutes of retries.
FAST_FAILURE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
SPOOLED_LINE = "kbench: tracking store {url} unreachable; results of 1 trial spooled in {path}; run `kbench sync`"


class Server:
    """``mlflow server`` of a SQLite store on 127.0.0.1, in its own process group: killed and started again."""

    def __init__(self, store: str, port: int, log: Path) -> None:
        self.store, self.port, self.log = store, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.store, "--workers", "1"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("a") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)
        wait_for_ok(f"{self.url}/health", tries=240)

    def kill(self) -> None:
        """SIGKILL to the server and its workers: gone at once, as a crashed host would be."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for key, value in FAST_FAILURE.items():
        monkeypatch.setenv(key, value)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    open_experiment(store, "kbench")
    served = Server(store, free_port(), tmp_path / "server.log")
    served.start()
    yield served
    served.kill()


def metric_history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def store_state(client: MlflowClient, experiment_id: str) -> list[tuple]:
    """Every run of the experiment with its status, params, tags and full metric histories; its logged models."""
    runs = []
    for run in client.search_runs([experiment_id], max_results=1000):
        histories = {key: metric_history(client, run.info.run_id, key) for key in run.data.metrics}
        tags = {k: v for k, v in run.data.tags.items() if k != "kbench.logged_model"}
        runs.append((run.info.run_name, run.info.status, run.data.params, tags, histories))
    models = client.search_logged_models([experiment_id])
    return [*sorted(runs, key=str), ("logged models", sorted((m.name, m.source_run_id) for m in models))]


@pytest.mark.slow
def test_a_trial_run_outlives_its_server_and_is_synced_exactly_once(
    server: Server, kbench_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    client = MlflowClient(tracking_uri=server.url)
    experiment_id = client.get_experiment_by_name("kbench").experiment_id
    parent_id = client.create_run(experiment_id, run_name="parent").info.run_id
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "weights.bin").write_bytes(b"\1" * 1000)
    with TrialRun(Tracking(server.url, experiment_id, parent_id), "clip/seed0", {"model": "clip"}) as run:
        run.log_params({"lr": 0.1, "sizes": [1, 2]})
        run.log_metrics({"pretrain/loss": 2.0}, step=1)
        server.kill()
        run.log_metrics({"pretrain/loss": 1.5}, step=2)
        run.log_metrics({"cr/acc": 42.0})
        run.set_tags({"protocol": "p v1"})
        run.log_text("config.yaml", "a: 1\n")
        run.log_text("cr.jsonl", '{"x": 1}\n', "samples")
        run.log_image("loss.png", Figure())
        run.log_dataset("synthfashion", "abc", None, {"train": 3, "test": 2})
        run.log_artifacts(checkpoint, "model")
        run.log_model(checkpoint, "model", {"kpg": True})
    folder = kbench_home / "spool" / parent_id
    (spool,) = folder.glob("*.jsonl")
    records = [json.loads(line) for line in spool.read_text().splitlines()]
    assert [r["op"] for r in records] == [
        "run", "metrics", "metrics", "tags", "artifacts", "artifacts", "artifacts", "inputs", "artifacts", "model",
        "terminate",
    ]  # fmt: skip
    assert records[0]["run_id"] == run.run_id and records[-1]["status"] == "FINISHED"
    server.start()
    assert client.get_run(run.run_id).info.status == "RUNNING"  # what the outage left
    kept = tmp_path / "spool-copy"
    shutil.copytree(folder, kept)

    assert main(["sync"]) == 0
    assert "replayed 1 spooled run of 1 invocation(s)" in capsys.readouterr().out
    assert not folder.exists()
    synced = client.get_run(run.run_id)
    assert synced.info.status == "FINISHED" and synced.info.end_time == records[-1]["end_time"]
    assert metric_history(client, run.run_id, "pretrain/loss") == [(1, 2.0), (2, 1.5)]
    assert synced.data.metrics["cr/acc"] == 42.0 and synced.data.tags["kbench.protocol"] == "p v1"
    assert synced.data.params == {"lr": "0.1", "sizes": "[1, 2]"}
    artifacts = Path(synced.info.artifact_uri.removeprefix("file://"))
    files = {str(f.relative_to(artifacts)) for f in artifacts.rglob("*") if f.is_file()}
    assert files == {"config.yaml", "loss.png", "samples/cr.jsonl", "model/weights.bin"}
    (model,) = client.search_logged_models([experiment_id])
    assert model.source_run_id == run.run_id and synced.data.tags["kbench.logged_model"] == model.model_id
    assert [i.dataset.digest for i in synced.inputs.dataset_inputs] == ["abc"]
    after_sync = store_state(client, experiment_id)

    assert main(["sync"]) == 0  # nothing left: nothing replayed
    assert "nothing to sync" in capsys.readouterr().out
    assert store_state(client, experiment_id) == after_sync

    # A sync that stopped after replaying the first half of the records, before marking the last of them done.
    shutil.copytree(kept, folder)
    (folder / spool.name).with_suffix(".done").write_text("".join(f"{seq}\n" for seq in range(1, 5)))
    assert main(["sync"]) == 0
    assert store_state(client, experiment_id) == after_sync
    assert not folder.exists()


@pytest.mark.slow
def test_invocations_creating_one_new_store_together_all_succeed(tmp_path: Path) -> None:
    """Four processes open a new SQLite store at the same moment (MLflow creates and migrates it) and log a run."""
    store = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    start = time.time() + 8  # past the imports of every process
    script = (
        "import sys, time\n"
        "from kbench.engine.tracking import Tracking, TrialRun, open_experiment\n"
        "time.sleep(max(0, float(sys.argv[2]) - time.time()))\n"
        "experiment = open_experiment(sys.argv[1], 'kbench')\n"
        "with TrialRun(Tracking(sys.argv[1], experiment), 'together', {'model': 'clip'}) as run:\n"
        "    run.log_metrics({'cr/acc': 1.0})\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, store, str(start)], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], errors
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("kbench").experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    with sqlite3.connect(tmp_path / "new" / "mlflow.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.slow
def test_a_run_whose_server_dies_mid_trial_ends_spooled_and_syncs_once(
    server: Server, kbench_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The server is killed while the trial runs and stays down: the trial finishes into the spool, the run exits 3
    with one line; once the server is back, ``kbench sync`` puts every spooled metric in the store exactly once."""
    argv = [sys.executable, "-m", "kbench", "run", "--model", "clip", "--task", "cr", "--profile", "smoke"]
    argv += ["--limit", "20", "--cpus-per-trial", "1", "--tracking-uri", server.url]
    run, parent_id, out, err = kill_server_mid_trial(server, argv, tmp_path)
    folder = kbench_home / "spool" / parent_id
    assert run.returncode == 3, err
    assert err.strip().splitlines()[-1] == (
        f"{SPOOLED_LINE.format(url=server.url, path=folder)} (or --resume) when it is back"
    ), err
    assert "Traceback" not in err and "Traceback" not in out
    (trial,) = [p for p in folder.glob("*.jsonl") if p.stem != "parent"]
    spooled = [json.loads(line) for line in trial.read_text().splitlines()]
    assert spooled[-1] == {**spooled[-1], "op": "terminate", "status": "FINISHED"}
    metrics = [tuple(m) for r in spooled if r["op"] == "metrics" for m in r["metrics"]]
    assert any(key == "cr/acc" for key, *_ in metrics)
    parent_ops = [json.loads(line)["op"] for line in (folder / "parent.jsonl").read_text().splitlines()]
    assert parent_ops == ["run", "summarize", "terminate"]

    server.start()
    client = MlflowClient(tracking_uri=server.url)
    assert client.get_run(parent_id).info.status == "RUNNING"  # what the outage left
    assert main(["sync"]) == 0
    assert "replayed 2 spooled runs of 1 invocation(s)" in capsys.readouterr().out
    assert not folder.exists()
    experiment_id = client.get_experiment_by_name("kbench").experiment_id
    runs = client.search_runs([experiment_id])
    (trial_id,) = [r.info.run_id for r in runs if r.info.run_id != parent_id]  # one trial run, created or not
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert client.get_run(trial_id).data.tags["kbench.run_key"] == spooled[0]["tags"]["kbench.run_key"]
    logged = [
        (m.key, m.value, m.timestamp, m.step)
        for key in {key for key, *_ in metrics}
        for m in client.get_metric_history(trial_id, key)
    ]
    assert all(logged.count(m) == 1 for m in metrics)  # every spooled value, once
    assert len(logged) == len(set(logged))
    losses = [m.step for m in client.get_metric_history(trial_id, "pretrain/loss")]
    assert sorted(losses) == list(range(1, len(losses) + 1))  # each epoch once, whether logged before or after
    trial_acc = client.get_run(trial_id).data.metrics["cr/acc"]
    assert client.get_run(parent_id).data.metrics["cr/acc"] == trial_acc  # the summary, replayed
    state = store_state(client, experiment_id)
    assert main(["sync"]) == 0 and "nothing to sync" in capsys.readouterr().out
    assert store_state(client, experiment_id) == state


def wait_for_trial_run(database: Path, run: subprocess.Popen, timeout: float = 600) -> str:
    """Once the run's trial has its MLflow run, the id of the parent run (read from the server's SQLite file)."""
    deadline = time.time() + timeout
    query = "SELECT value FROM tags WHERE key = 'mlflow.parentRunId'"
    while time.time() < deadline and run.poll() is None:
        if database.exists():
            with sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=5) as db:
                try:
                    found = db.execute(query).fetchall()
                except sqlite3.OperationalError:  # no tables yet
                    found = []
            if found:
                return found[0][0]
        time.sleep(0.2)
    raise AssertionError(f"no trial run appeared; kbench exited {run.poll()}")


def kill_server_mid_trial(server: Server, argv: list[str], cwd: Path) -> tuple[subprocess.Popen, str, str, str]:
    """Run ``argv`` in ``cwd``, kill ``server`` once its trial has an MLflow run, wait for the end: the process, the
    parent run's id and the output."""
    run = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    try:
        parent_id = wait_for_trial_run(cwd / "mlflow.db", run)
        server.kill()
        out, err = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
    return run, parent_id, out, err


@pytest.mark.slow
def test_a_store_lost_once_the_parent_run_is_open_spools_the_drivers_writes(
    server: Server, capsys: pytest.CaptureFixture
) -> None:
    """The server dies after the parent run opens, before the trials: the extraction's metrics on the parent run,
    the trial's run, the summary and the parent's end are spooled (``Spooled``); ``kbench sync`` completes them."""
    from kbench.engine.tracking import log_parent_metrics  # the write launch.prepare_features makes on the parent

    client = MlflowClient(tracking_uri=server.url)
    tracking = Tracking(server.url, open_experiment(server.url, "kbench"))
    tags = {"model": "clip", "variant": "default", "config_hash": "h1", "tasks": "cr"}
    with pytest.raises(Spooled), parent_run(tracking, "clip · cr", {"command": "run"}, {"tasks": "cr"}) as parent_id:
        server.kill()
        child = Tracking(server.url, tracking.experiment_id, parent_id)
        log_parent_metrics(child, {"time/extraction_s": 1.5})
        with TrialRun(child, "clip/seed0", tags) as run:
            run.log_metrics({"cr/acc": 42.0})
        conclude(server.url, tracking.experiment_id, parent_id, {"clip/seed0": ("clip", "default", "h1")}, "cr")
    server.start()
    assert main(["sync"]) == 0 and "replayed 2 spooled runs" in capsys.readouterr().out
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics == {"time/extraction_s": 1.5, "cr/acc": 42.0}
    (trial,) = client.search_runs([tracking.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert trial.info.status == "FINISHED" and trial.data.metrics == {"cr/acc": 42.0}


@pytest.mark.slow
@pytest.mark.parametrize("replay", ["sync", "resume"])
def test_a_store_down_from_the_start_spools_the_whole_invocation_and_replays_it_once(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, replay: str
) -> None:
    """The server is down before kbench starts: the trial runs anyway, the parent run (its params, the feature
    extraction's metrics, the summary, its end) and the trial's run go to the spool, exit 3 with kbench's one line and
    none of urllib3's retry warnings. Once the server is back, ``kbench sync`` or the same
    command with ``--resume`` (which then runs nothing again) creates the parent and its trial under it, once."""
    home = tmp_path / "home"  # a cache of its own, so that this run extracts the features (and logs that it did)
    monkeypatch.setenv("KBENCH_HOME", str(home))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # urllib3 retries, and warns that it does
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    argv = [sys.executable, "-m", "kbench", "run", "--model", "fashionbert", "--task", "cr", "--profile", "smoke"]
    argv += ["--limit", "20", "--cpus-per-trial", "1", "--tracking-uri", server.url]
    server.kill()
    first = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert first.returncode == 3, first.stderr
    (folder,) = (home / "spool").iterdir()
    assert first.stderr.strip().splitlines()[-1] == (
        f"{SPOOLED_LINE.format(url=server.url, path=folder)} (or --resume) when it is back"
    ), first.stderr
    assert "Traceback" not in first.stderr + first.stdout and "Retrying" not in first.stderr, first.stderr

    server.start()
    if replay == "sync":
        assert main(["sync"]) == 0
        assert "replayed 2 spooled runs of 1 invocation(s)" in capsys.readouterr().out
    else:
        resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True, cwd=tmp_path, timeout=900)
        assert resumed.returncode == 0, resumed.stderr
        assert "replayed 2 spooled runs of 1 invocation(s)" in resumed.stderr, resumed.stderr
        assert "1 of 1 trials already finished" in resumed.stderr, resumed.stderr
        assert "starting Ray" not in resumed.stderr  # nothing ran again
    assert not folder.exists()
    client = MlflowClient(tracking_uri=server.url)
    experiment_id = client.get_experiment_by_name("kbench").experiment_id
    runs = client.search_runs([experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (trial,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert parent.data.params == {"trials": "fashionbert/seed0", "tasks": "cr"}
    assert {"time/extraction_s", "mem/extraction_peak_mb"} <= set(parent.data.metrics)
    assert parent.data.metrics["cr/acc"] == trial.data.metrics["cr/acc"]  # the summary, over the replayed trial
    state = store_state(client, experiment_id)
    assert main(["sync"]) == 0 and "nothing to sync" in capsys.readouterr().out
    assert store_state(client, experiment_id) == state


@pytest.mark.slow
def test_a_tune_whose_server_dies_mid_search_ends_spooled_and_syncs_once(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The server is killed while the sample runs: the search still writes its recipe, the sample's logging and the
    parent run's best recipe go to the spool, exit 3 with one line (urllib3's retry warnings go to the run's log);
    ``kbench sync`` puts them in the store once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # urllib3 retries, and warns that it does
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    argv = [sys.executable, "-m", "kbench", "tune", "--model", "fashionbert", "--task", "cr", "--profile", "smoke"]
    argv += ["--samples", "1", "--limit", "20", "--cpus-per-trial", "1", "--tracking-uri", server.url]
    argv += ["--out", str(tmp_path / "recipe.yaml")]
    run, parent_id, out, err = kill_server_mid_trial(server, argv, tmp_path)
    assert run.returncode == 3, err
    folder = Path(os.environ["KBENCH_HOME"]) / "spool" / parent_id
    assert err.strip().splitlines()[-1] == (
        f"{SPOOLED_LINE.format(url=server.url, path=folder)} (or --resume) when it is back"
    ), err
    assert "Traceback" not in err + out and "Retrying" not in err and (tmp_path / "recipe.yaml").exists()

    server.start()
    client = MlflowClient(tracking_uri=server.url)
    run_log = Path(os.environ["KBENCH_HOME"]) / "tune" / client.get_run(parent_id).info.run_name / "output.log"
    assert "Retrying (Retry(" in run_log.read_text()
    assert main(["sync"]) == 0
    assert "replayed 2 spooled runs of 1 invocation(s)" in capsys.readouterr().out
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and "best/dev_acc" in parent.data.metrics
    assert {"best.lr", "best.epochs"} <= set(parent.data.params)
    assert [a.path for a in client.list_artifacts(parent_id)] == ["recipe.yaml"]
    (sample,) = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert sample.info.status == "FINISHED" and "dev/acc" in sample.data.metrics
    state = store_state(client, parent.info.experiment_id)
    assert main(["sync"]) == 0 and "nothing to sync" in capsys.readouterr().out
    assert store_state(client, parent.info.experiment_id) == state
