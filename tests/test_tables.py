"""Tables rebuilt from a real MLflow store, pinned by golden files for every format."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kbench.tables import FORMATS, build_main, summarise
from kbench.tracking import Tracking, TrialRun, open_experiment

GOLDEN = Path(__file__).parent / "golden"

RUNS = [
    # (model, seed, profile, metric offset) — two seeds of fashionbert, one of a model the paper lacks
    ("fashionbert", 0, "default", 0.0),
    ("fashionbert", 1, "default", 2.0),
    ("clip", 0, "default", -5.0),
    ("fashionbert", 0, "smoke", 50.0),  # another profile: never mixed into the default table
]


def metrics_for(offset: float) -> dict[str, float]:
    recall = {f"{t}/R{k}": 10.0 * i + k + offset for i, t in enumerate(("itr", "tir")) for k in (1, 5, 10)}
    cls = {"cr/acc": 80 + offset, "cr/macro_f": 0.5 + offset / 100, "sub/acc": 60 + offset, "sub/macro_f": 0.25}
    cap = {"fc/BLEU-4": 3.0 + offset, "fc/METEOR": 10.0, "fc/ROUGE-L": 30.0, "fc/CIDEr": 25.0 + offset}
    sums = {
        "sums/SumR": sum(recall.values()),
        "sums/SumCLS": cls["cr/acc"] + 100 * cls["cr/macro_f"] + cls["sub/acc"] + 100 * cls["sub/macro_f"],
        "sums/SumCAP": sum(cap.values()),
    }
    return {**recall, **cls, **cap, **sums}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    experiment = open_experiment(uri, "tables")
    for model, seed, profile, offset in RUNS:
        tags = {"model": model, "variant": "default", "seed": seed, "profile": profile, "dataset": "synth"}
        tags["protocol"] = "fashionbert-101 v1"
        with TrialRun(Tracking(uri, experiment), f"{model}/seed{seed}", tags) as run:
            run.log_metrics(metrics_for(offset))
    failed = TrialRun(Tracking(uri, experiment), "failed", {**tags, "profile": "default", "model": "fashionbert"})
    failed.log_metrics(metrics_for(1000.0))
    failed.__exit__(RuntimeError, None, None)  # a FAILED run never reaches a table
    return uri


@pytest.mark.parametrize("fmt", FORMATS)
def test_main_table_matches_golden(store: str, fmt: str) -> None:
    text = build_main(store, "tables", fmt, profile="default", dataset="synth")
    golden = GOLDEN / f"main.{fmt}"
    if os.environ.get("KBENCH_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_default_selection_is_the_newest_profile(store: str) -> None:
    text = build_main(store, "tables", "csv")
    assert "profile smoke" not in text  # csv has no caption; check the values instead
    assert "fashionbert,kbench,1,51,," in text  # the smoke run (offset 50) alone: value 51, no interval


def test_mean_and_interval() -> None:
    import pandas as pd

    mean, half, n = summarise(pd.Series([1.0, 3.0]))
    assert (mean, n) == (2.0, 2) and half == pytest.approx(12.706204736174698 * 1.0 / 1.0)  # t(0.975, 1) * sd/sqrt(2)
    assert summarise(pd.Series([4.0])) == (4.0, None, 1)
