"""Figures drawn from a real MLflow store (values read back off the axes), and the MLflow UI serving a real run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from matplotlib.container import BarContainer
from mlflow.tracking import MlflowClient

from kbench.commands.cli import main
from kbench.engine.tracking import Tracking, TrialRun, open_experiment
from kbench.report.plots import SUMS, ablation_figure, curves_figure, plot_ablation, plot_curves
from kbench.report.tables import Samples, ablation_cells, load_runs

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('plots') / 'mlflow.db'}"
    tracking = Tracking(uri, open_experiment(uri, "plots"))
    for variant, seed, sums in (("agm:random", 0, 100.0), ("agm:random", 1, 110.0), ("agm:agm", 0, 130.0)):
        tags = {"model": "kaleido", "variant": variant, "seed": seed, "profile": "default", "dataset": "synth"}
        with TrialRun(tracking, variant, tags) as run:
            run.log_metrics({"sums/SumR": sums, "sums/SumCLS": sums / 2, "sums/SumCAP": sums / 4})
    tags = {"model": "kaleido", "variant": "default", "seed": 0, "profile": "default", "dataset": "synth"}
    with TrialRun(tracking, "default", tags) as run:
        for epoch in (1, 2, 3):
            run.log_metrics({"pretrain/rr_acc": 0.3 * epoch, "pretrain/rr_loss": 1.0 / epoch}, step=epoch)
    return uri


def test_ablation_bars_hold_our_means_intervals_and_the_papers_values(store: str, tmp_path: Path) -> None:
    runs = load_runs(store, "plots")
    fig = ablation_figure(ablation_cells(runs, "agm", "kaleido", Samples(store)), "agm")
    panel = fig.axes[SUMS.index("SumR")]
    assert [bar.get_height() for bar in panel.patches] == pytest.approx([105.0, 130.0])
    bars = next(c for c in panel.containers if isinstance(c, BarContainer))
    error = bars.errorbar.lines[2][0].get_segments()[0]  # the Random bar's error bar
    assert error[1][1] - error[0][1] == pytest.approx(2 * 12.706204736174698 * 5.0, rel=1e-6)
    assert panel.collections[-1].get_offsets()[:, 1].tolist() == [299.5, 319.52]  # the paper's SumR
    paths = plot_ablation(store, "plots", "agm", tmp_path)
    assert paths == [tmp_path / "ablation-agm-default-synth.png"] and paths[0].read_bytes().startswith(PNG)
    client = MlflowClient(tracking_uri=store)
    plot_runs = client.search_runs(
        [client.get_experiment_by_name("plots").experiment_id], "tags.`kbench.command` = 'plot'"
    )
    assert [a.path for a in client.list_artifacts(plot_runs[0].info.run_id)] == ["ablation-agm-default-synth.png"]


def test_curves_follow_the_logged_history(store: str, tmp_path: Path) -> None:
    fig = curves_figure({"pretrain/rr_acc": [(1, 0.3), (2, 0.6)], "pretrain/rr_loss": [(1, 1.0), (2, 0.5)]}, "t")
    losses, accuracies = fig.axes
    assert accuracies.lines[0].get_ydata().tolist() == [0.3, 0.6] and losses.lines[0].get_label() == "RR"
    # any entry's objectives: Fig. 7's first, then the others (ViLBERT's MRM, FashionBERT's MPFC) by name
    history = {f"pretrain/{t}_loss": [(1, 1.0)] for t in ("mrm", "itm", "mpfc", "mlm")} | {"pretrain/loss": [(1, 3.0)]}
    losses, _ = curves_figure(history, "t").axes
    assert [line.get_label() for line in losses.lines] == ["MLM", "ITM", "MPFC", "MRM"]
    assert main(["plot", "--curves", "--out", str(tmp_path), "--tracking-uri", store, "--experiment", "plots"]) == 0
    path = tmp_path / "curves-kaleido-default-synth.png"
    assert path.read_bytes().startswith(PNG)
    assert plot_curves(store, "plots", tmp_path) == [path]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_smoke_run_logs_through_the_ui_server(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = open_experiment(store, "kbench")
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "kbench", "ui", "--port", str(port), "--tracking-uri", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        argv = ["run", "--model", "fashionbert", "--task", "cr", "--profile", "smoke", "--tracking-uri", url]
        assert main(argv) == 0
        request = urllib.request.Request(
            f"{url}/api/2.0/mlflow/runs/search",
            data=json.dumps(
                {"experiment_ids": [experiment_id], "filter": "tags.`kbench.model` = 'fashionbert'"}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        runs = json.loads(urllib.request.urlopen(request, timeout=10).read())["runs"]
        assert len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED"
        metrics = {m["key"]: m["value"] for m in runs[0]["data"]["metrics"]}
        assert 0 <= metrics["cr/acc"] <= 100 and metrics["pretrain/loss"] > 0
    finally:
        os.killpg(ui.pid, 15)
        ui.wait(timeout=30)
