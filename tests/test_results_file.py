"""``--output-path DIR``: one results file per invocation, valid against the shipped schema, equal to what MLflow
logged and to the ``results.json`` of the parent run, with the intervals ``Results.to_pandas`` gives; a bad
directory is refused before anything runs."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import jsonschema
import pytest
from cli_output import error_lines
from mlflow.tracking import MlflowClient

import kbench
from kbench.commands.cli import main
from kbench.report.results_file import schema

ARGS = ["--model", "fashionbert", "--task", "itr,cr", "--profile", "smoke", "--seeds", "2", "--experiment", "rf"]


@pytest.fixture(scope="module")
def invocations(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``kbench run`` with ``--output-path`` (its two seeds' trials at once, a core each), then the same through
    ``kbench.evaluate`` (resumed: nothing reruns)."""
    root = tmp_path_factory.mktemp("results-file")
    uri, out = f"sqlite:///{root / 'mlflow.db'}", root / "out"
    code = main(["run", *ARGS, "--cpus-per-trial", "1", "--tracking-uri", uri, "--output-path", str(out)])
    first = sorted(out.glob("*.json"))
    results = kbench.evaluate(
        "fashionbert",
        tasks="itr,cr",
        profile="smoke",
        seeds=2,
        tracking_uri=uri,
        experiment="rf",
        resume=True,
        output_path=out,
    )
    return {"code": code, "uri": uri, "out": out, "first": first, "results": results}


def load(path: Path) -> dict:
    document = json.loads(path.read_text())
    jsonschema.validate(document, schema())
    return document


@pytest.mark.slow
def test_each_invocation_writes_its_own_valid_file(invocations: dict) -> None:
    assert invocations["code"] == 0 and len(invocations["first"]) == 1
    files = sorted(invocations["out"].glob("*.json"))
    assert len(files) == 2 and invocations["first"][0] in files
    assert all(f.name.startswith("fashionbert-") for f in files)
    assert not list(invocations["out"].glob(".*")), "no temporary file left behind"
    first, second = (load(f) for f in sorted(files, key=lambda f: f != invocations["first"][0]))
    assert first["command"] == second["command"] == "run"
    assert first["invocation"]["seeds"] == [0, 1] and first["invocation"]["tasks"] == ["itr", "cr"]
    assert first["config"]["profile"] == "smoke" and first["config"]["data"]["dataset"] == "synth"
    assert first["versions"]["kbench"] == kbench.__version__ and first["versions"]["torch"]
    assert first["mlflow"]["parent_run_id"] and second["mlflow"]["parent_run_id"] is None  # resumed: nothing ran
    assert first["mlflow"]["child_run_ids"] == second["mlflow"]["child_run_ids"]
    assert first["results"] == second["results"]


@pytest.mark.slow
def test_the_file_matches_the_mlflow_runs(invocations: dict, tmp_path: Path) -> None:
    document = load(invocations["first"][0])
    client = MlflowClient(tracking_uri=invocations["uri"])
    experiment = client.get_experiment_by_name("rf")
    parent = document["mlflow"]["parent_run_id"]
    logged = Path(client.download_artifacts(parent, "results.json", str(tmp_path)))
    assert logged.read_text() == invocations["first"][0].read_text(), "the parent run holds the same file"
    assert document["mlflow"]["experiment_id"] == experiment.experiment_id
    assert document["git_sha"] == client.get_run(parent).data.tags["kbench.git_sha"]
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    labels = {f"fashionbert/seed{r.data.tags['kbench.seed']}": r.info.run_id for r in children}
    assert document["mlflow"]["child_run_ids"] == labels == invocations["results"].run_ids
    fingerprints = set()
    for trial in document["trials"]:
        run = client.get_run(trial["run_id"])
        assert trial["run_id"] == labels[trial["label"]] and trial["parent_run_id"] == parent
        assert trial["metrics"] == run.data.metrics
        assert trial["config_hash"] == run.data.tags["kbench.config_hash"]
        assert trial["data_fingerprint"] == run.data.tags["kbench.data_fingerprint"]
        fingerprints.add(trial["data_fingerprint"])
        assert set(trial["samples"]) == {"itr", "cr"}
        for task, uri in trial["samples"].items():
            path = Path(unquote(urlparse(uri).path))
            assert path.name == f"{task}.jsonl" and path.stat().st_size > 0
    assert document["dataset"] == {"name": "synth", "fingerprint": fingerprints.pop()}
    for seed in document["results"]["fashionbert"]["cr"]["acc"]["per_seed"]:
        assert seed["value"] == client.get_run(seed["run_id"]).data.metrics["cr/acc"]


@pytest.mark.slow
def test_intervals_are_those_of_results_to_pandas(invocations: dict) -> None:
    document = load(invocations["first"][0])
    frame = invocations["results"].to_pandas()
    assert len(frame) == sum(len(metrics) for metrics in document["results"]["fashionbert"].values())
    for row in frame.itertuples():
        cell = document["results"]["fashionbert"][row.task][row.metric]
        assert cell["mean"] == row.value and cell["n_seeds"] == row.seeds == 2
        assert cell["ci_low"] == row.ci_low and cell["ci_high"] == row.ci_high
        assert cell["interval"] == row.interval == "t over seeds"
        assert {s["run_id"] for s in cell["per_seed"]} == set(row.run_ids.split(","))
        assert sum(s["value"] for s in cell["per_seed"]) / 2 == pytest.approx(row.value)


@pytest.mark.parametrize("command", [["run"], ["ablate", "agm"], ["tune", "--task", "cr"]])
def test_a_bad_output_path_fails_before_anything_runs(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = tmp_path / "mlflow.db"
    afile = tmp_path / "afile"
    afile.write_text("")
    for bad, reason in ((afile, "is a file; it takes a directory"), (afile / "sub", "cannot create the directory")):
        argv = [*command, "--profile", "smoke", "--tracking-uri", f"sqlite:///{store}", "--output-path", str(bad)]
        assert main(argv) == 2
        (err,) = error_lines(capsys.readouterr().err)
        assert err.startswith(f"kbench: error: --output-path {bad}") and reason in err
    assert not store.exists(), "nothing ran: no tracking store was made"
