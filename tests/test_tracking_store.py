"""The tracking store read back: the direct SQLite reader returns exactly what MLflow's client returns, on a real
store MLflow wrote (latest of several steps, NaN, deleted, failed and unfinished runs, another experiment), and the
artifacts read in place equal MLflow's downloads."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kbench.core import tracking_store
from kbench.core.errors import KbenchError
from kbench.core.tracking_store import finished_runs, read_artifact


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("kb", artifact_location=(root / "artifacts").as_uri())
    other = client.create_experiment("other", artifact_location=(root / "artifacts").as_uri())
    for i in range(4):
        run = client.create_run(experiment, run_name=f"run{i}", tags={"kbench.model": f"m{i}", "note": "é ✓"})
        rid = run.info.run_id
        client.log_param(rid, "pretrain.lr", f"{i}e-3")
        for step, value in enumerate((0.5, 0.25, 0.125 * i)):
            client.log_metric(rid, "pretrain/loss", value, step=step)
        client.log_metric(rid, "itr/R1", float("nan") if i == 1 else 10.0 * i)
        (root / rid).mkdir()
        (root / rid / "itr.jsonl").write_text(f'{{"rank": {i}}}\n')
        client.log_artifact(rid, str(root / rid / "itr.jsonl"), "samples")
        client.set_terminated(rid, "FAILED" if i == 3 else "FINISHED")
    client.delete_run(client.search_runs([experiment], "tags.`kbench.model` = 'm2'")[0].info.run_id)
    client.create_run(experiment, run_name="running")  # never finished
    client.set_terminated(client.create_run(other, run_name="elsewhere").info.run_id)
    return uri


def test_the_direct_reader_returns_what_mlflow_returns(store: str) -> None:
    direct = finished_runs(store, "kb")
    through_mlflow = sorted(tracking_store._client_runs(store, "kb"), key=lambda r: (-r.start_time, r.run_id))
    assert [r.tags["kbench.model"] for r in direct] == ["m1", "m0"]  # newest first; deleted, failed, running out
    assert [r.run_id for r in direct] == [r.run_id for r in through_mlflow]
    for a, b in zip(direct, through_mlflow, strict=True):
        assert (a.start_time, a.artifact_uri, a.tags, a.params) == (b.start_time, b.artifact_uri, b.tags, b.params)
        assert a.metrics.keys() == b.metrics.keys() == {"pretrain/loss", "itr/R1"}
        for key, value in a.metrics.items():
            assert value == b.metrics[key] or (math.isnan(value) and math.isnan(b.metrics[key]))
    assert direct[0].metrics["pretrain/loss"] == 0.125  # the last step's value
    assert math.isnan(direct[0].metrics["itr/R1"])


def test_artifacts_read_in_place_equal_mlflows_downloads(store: str) -> None:
    for run in finished_runs(store, "kb"):
        in_place = read_artifact(store, run.run_id, "samples/itr.jsonl", run.artifact_uri)
        assert (
            in_place
            == read_artifact(store, run.run_id, "samples/itr.jsonl")
            == f'{{"rank": {run.params["pretrain.lr"][0]}}}\n'
        )
        assert read_artifact(store, run.run_id, "samples/fc.jsonl", run.artifact_uri) is None
        assert read_artifact(store, run.run_id, "samples/fc.jsonl") is None


def test_missing_stores_and_experiments_are_one_line(store: str, tmp_path: Path) -> None:
    with pytest.raises(KbenchError, match="no MLflow tracking store at"):
        finished_runs(f"sqlite:///{tmp_path / 'none.db'}", "kb")
    with pytest.raises(KbenchError, match="no experiment 'nosuch'"):
        finished_runs(store, "nosuch")
    assert not (tmp_path / "none.db").exists()  # reading never creates a store


def test_reading_a_sqlite_store_imports_no_mlflow(store: str) -> None:
    code = (
        "import sys; from kbench.core.tracking_store import finished_runs, read_artifact; "
        f"runs = finished_runs({store!r}, 'kb'); "
        "assert read_artifact('', runs[0].run_id, 'samples/itr.jsonl', runs[0].artifact_uri); "
        "assert 'mlflow' not in sys.modules, 'mlflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
