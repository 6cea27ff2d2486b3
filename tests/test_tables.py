"""Tables rebuilt from a real MLflow store, pinned by golden files for every format."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kbench.ablations import BLOCKS
from kbench.errors import KbenchError
from kbench.tables import FORMATS, ablation_cells, build_ablation, build_main, load_runs, published, summarise
from kbench.tracking import Tracking, TrialRun, open_experiment

GOLDEN = Path(__file__).parent / "golden"

RUNS = [
    # (model, seed, profile, metric offset) — two seeds of fashionbert, one of a model the paper lacks
    ("fashionbert", 0, "default", 0.0),
    ("fashionbert", 1, "default", 2.0),
    ("clip", 0, "default", -5.0),
    ("fashionbert", 0, "smoke", 50.0),  # another profile: never mixed into the default table
]
ABLATION_RUNS = [
    # (variant, seed, metric offset): AGM clearly better than random; kpg with one seed per column
    ("agm:random", 0, 0.0),
    ("agm:random", 1, 1.0),
    ("agm:agm", 0, 20.0),
    ("agm:agm", 1, 21.0),
    ("kpg:scale-fixed", 0, 0.0),
    ("kpg:kaleido", 0, 0.5),
    ("kpg:kaleido+sod", 0, 3.0),
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
    for variant, seed, offset in ABLATION_RUNS:
        tags = {"model": "kaleido", "variant": variant, "seed": seed, "profile": "default", "dataset": "synth"}
        tags["protocol"] = "fashionbert-101 v1"
        with TrialRun(Tracking(uri, experiment), f"kaleido/{variant}/seed{seed}", tags) as run:
            run.log_metrics(metrics_for(offset))
    for model, seed, profile, offset in RUNS:
        tags = {"model": model, "variant": "default", "seed": seed, "profile": profile, "dataset": "synth"}
        tags["protocol"] = "fashionbert-101 v1"
        with TrialRun(Tracking(uri, experiment), f"{model}/seed{seed}", tags) as run:
            run.log_metrics(metrics_for(offset))
    limited = {**tags, "model": "fashionbert", "seed": 0, "profile": "default", "limit": 64}  # kbench run --limit 64
    with TrialRun(Tracking(uri, experiment), "fashionbert/seed0 limited", limited) as run:
        run.log_metrics(metrics_for(70.0))
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


def test_limited_runs_are_never_mixed_with_full_ones(store: str) -> None:
    full = build_main(store, "tables", "csv", profile="default", dataset="synth")
    assert "fashionbert,kbench,2,2,12.7062," in full and ",71," not in full  # two full seeds: R1 = 1 and 3
    limited = build_main(store, "tables", "csv", profile="default", dataset="synth", limit=64)
    assert "fashionbert,kbench,1,71,," in limited and "clip,kbench" not in limited  # the limited run alone
    caption = build_main(store, "tables", "md", profile="default", dataset="synth", limit=64)
    assert "limited to the first 64 products of each split" in caption
    with pytest.raises(KbenchError, match="no finished --limit 5 kbench runs"):
        build_main(store, "tables", "md", limit=5)


def test_mean_and_interval() -> None:
    import pandas as pd

    mean, half, n = summarise(pd.Series([1.0, 3.0]))
    assert (mean, n) == (2.0, 2) and half == pytest.approx(12.706204736174698 * 1.0 / 1.0)  # t(0.975, 1) * sd/sqrt(2)
    assert summarise(pd.Series([4.0])) == (4.0, None, 1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_ablation_table_matches_golden(store: str, fmt: str) -> None:
    text = build_ablation(store, "tables", "agm", fmt, profile="default", dataset="synth")
    golden = GOLDEN / f"ablation-agm.{fmt}"
    if os.environ.get("KBENCH_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_ablation_cells_against_their_definition(store: str) -> None:
    runs = load_runs(store, "tables")
    runs = runs[runs["profile"] == "default"]
    cells = ablation_cells(runs, "agm", "kaleido")
    headers = "ITR R@1, ITR R@5, ITR R@10, TIR R@1, TIR R@5, TIR R@10, SumR, CR ACC, CR macro-F, SUB ACC"
    headers += ", SUB macro-F, SumCLS, BLEU-4, METEOR, ROUGE-L, CIDEr, SumCAP"
    assert list(cells) == headers.split(", ")
    random, guided = cells["ITR R@1"]["Random"], cells["ITR R@1"]["AGM"]
    assert random.ours[0] == pytest.approx(1.5) and guided.ours[0] == pytest.approx(21.5)  # R1 = 1 + offset
    assert guided.relative == pytest.approx(100 * (21.5 - 1.5) / 1.5) and random.relative is None
    assert not guided.overlaps  # 1.5 ± 6.35 and 21.5 ± 6.35 are disjoint
    assert cells["SUB macro-F"]["AGM"].overlaps  # a constant metric: equal values, zero-width intervals
    assert guided.paper == 27.99 and guided.paper_relative == pytest.approx(100 * (27.99 - 26.55) / 26.55)
    kpg = ablation_cells(runs, "kpg", "kaleido")["ITR R@1"]
    assert kpg["Kaleido."].ours == (1.5, None) and not kpg["Kaleido."].overlaps  # one seed: no interval to compare
    with pytest.raises(KbenchError, match="no finished akpm ablation runs"):
        build_ablation(store, "tables", "akpm", "md", profile="default", dataset="synth")
    with pytest.raises(KbenchError, match="unknown ablation block 'agn'; did you mean agm"):
        build_ablation(store, "tables", "agn", "md")


def test_every_variant_has_its_paper_column_and_option() -> None:
    paper = published()["table4_ablations"]
    columns = [v.paper for block in BLOCKS.values() for v in block]
    assert columns == list(paper)  # every published column, in the paper's order, exactly once
    assert [v.tag for v in BLOCKS["agm"]] == ["agm:random", "agm:agm"]
    assert BLOCKS["akpm"][3].overrides("kaleido") == ("models.kaleido.akpm=B+I~III",)
    assert BLOCKS["kpg"][0].overrides("kaleido") == ("models.kaleido.kpg=scale-fixed",)
