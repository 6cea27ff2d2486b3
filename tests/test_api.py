"""The Python API: ``kbench.evaluate`` runs real trials and returns their results with intervals, run ids and tables;
the README's example runs as written."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import kbench
from kbench.core.errors import KbenchError
from kbench.engine.checkpoints import load_checkpoint, local_checkpoint

pytestmark = pytest.mark.slow  # starts Ray


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('api') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def results(store: str) -> kbench.Results:
    """The README's Python example, run as written there (its results go to this module's store)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    example = re.search(r"<!-- api-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", store)
    namespace: dict = {}
    try:
        exec(compile(example, "README.md", "exec"), namespace)
    finally:
        mp.undo()
    return namespace["results"]


def test_evaluate_returns_every_seeds_run(results: kbench.Results, store: str) -> None:
    assert set(results.run_ids) == {"fashionbert/seed0", "fashionbert/seed1"}
    client = MlflowClient(tracking_uri=store)
    for label, run_id in results.run_ids.items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["kbench.seed"] == label.removeprefix("fashionbert/seed")
        assert run.data.tags["mlflow.parentRunId"] == results.parent_run_id


def test_to_pandas_means_and_t_intervals_match_the_logged_metrics(results: kbench.Results, store: str) -> None:
    frame = results.to_pandas()
    client = MlflowClient(tracking_uri=store)
    logged = [client.get_run(r).data.metrics for r in results.run_ids.values()]
    row = frame[(frame["task"] == "cr") & (frame["metric"] == "acc")].iloc[0]
    values = [m["cr/acc"] for m in logged]
    assert row["value"] == pytest.approx(sum(values) / 2)
    assert row["seeds"] == 2 and row["interval"] == "t over seeds"
    assert row["ci_low"] <= row["value"] <= row["ci_high"]
    # two values: the t-interval's half-width is t(0.975, 1) * |a - b| / 2
    assert row["ci_high"] - row["value"] == pytest.approx(12.7062047 * abs(values[0] - values[1]) / 2, rel=1e-6)
    assert set(row["run_ids"].split(",")) == set(results.run_ids.values())
    assert {"itr/R1", "itr/pretrained_R1", "cr/acc", "cr/macro_f"} <= set(results.metrics()["fashionbert"])
    assert math.isnan(frame.set_index(["task", "metric"]).get("value").get(("tir", "R1"), math.nan))


def test_table_shows_these_runs_beside_the_paper(results: kbench.Results) -> None:
    table = results.table()
    row = next(line for line in table.splitlines() if line.startswith("| FashionBERT (kbench)"))
    assert re.search(r"\| 2 +\| t over seeds", row), row
    assert "| FashionBERT          | paper" in table


def test_resume_returns_the_finished_runs_without_running(results: kbench.Results, store: str) -> None:
    """The same config spelled with overrides (a mapping, then strings) finds the example's runs and runs nothing."""
    for overrides in ({"pretrain.epochs": 1, "tasks.cr.finetune.lr": 1e-4}, ["pretrain.epochs=1"]):
        again = kbench.evaluate(
            "fashionbert",
            tasks="itr,cr",
            profile="smoke",
            overrides=overrides,
            seeds=2,
            tracking_uri=store,
            resume=True,
        )
        assert again.run_ids == results.run_ids and again.parent_run_id is None


def test_bad_arguments_fail_before_anything_runs(store: str) -> None:
    with pytest.raises(KbenchError, match="unknown model 'fashionbret'; did you mean fashionbert"):
        kbench.evaluate("fashionbret", tracking_uri=store)
    with pytest.raises(KbenchError, match=r"unknown config key 'pretrain\.lrr'"):
        kbench.evaluate("fashionbert", overrides={"pretrain.lrr": 1.0}, tracking_uri=store)
    with pytest.raises(KbenchError, match="seeds must be at least 1"):
        kbench.evaluate("fashionbert", seeds=0, tracking_uri=store)


def test_a_model_instance_or_a_checkpoint_is_evaluated_as_given(results: kbench.Results, store: str) -> None:
    """The weights of the example's seed-0 trial, passed as an instance and as its logged model, score the fixed
    candidate lists exactly as that trial's pre-trained head did; nothing is pre-trained."""
    source = f"runs:/{results.run_ids['fashionbert/seed0']}/model"
    instance = load_checkpoint("fashionbert", local_checkpoint(source, store))
    client = MlflowClient(tracking_uri=store)
    expected = client.get_run(results.run_ids["fashionbert/seed0"]).data.metrics["itr/pretrained_R5"]
    for given in (instance, source):
        again = kbench.evaluate(given, tasks="itr", profile="smoke", finetune=False, tracking_uri=store)
        (run_id,) = again.run_ids.values()
        run = client.get_run(run_id)
        assert run.data.tags["kbench.model"] == "fashionbert" and "kbench.checkpoint" in run.data.tags
        assert not any(k.startswith("pretrain/") for k in run.data.metrics)
        assert run.data.metrics["itr/pretrained_R5"] == expected == run.data.metrics["itr/R5"]
