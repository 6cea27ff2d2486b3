"""Figures drawn from a real MLflow store (values read back off the axes), and the MLflow UI serving a real run."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from kbench.commands.cli import main
from kbench.engine.tracking import Tracking, TrialRun, open_experiment, parent_run
from kbench.report.plots import ablation_figure, curves_figure, plot_ablation, plot_curves, save
from kbench.report.tables import Samples, ablation_cells, load_runs

PNG, PDF = b"\x89PNG\r\n\x1a\n", b"%PDF"
T_975_1 = 12.706204736174698  # t(0.975) with one degree of freedom


def trial(tracking: Tracking, variant: str, seed: int, sums: float = 0.0) -> None:
    """A finished kaleido trial run: its sums, and three epochs of pre-training losses for default runs."""
    tags = {"model": "kaleido", "variant": variant, "seed": seed, "profile": "default", "dataset": "synth"}
    with TrialRun(tracking, variant, tags) as run:
        run.log_metrics({"sums/SumR": sums, "sums/SumCLS": sums / 2, "sums/SumCAP": sums / 4})
        for epoch in (1, 2, 3) if variant == "default" else ():
            losses = {"pretrain/rr_acc": 0.3 * epoch, "pretrain/rr_loss": 1.0 / epoch, "pretrain/mlm_loss": 9 - seed}
            run.log_metrics(losses, step=epoch)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """agm and the default runs each under one invocation's parent run; kpg's split over a parent and none."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('plots') / 'mlflow.db'}"
    tracking = Tracking(uri, open_experiment(uri, "plots"))
    with parent_run(tracking, "ablate agm", {"command": "ablate"}, {}) as parent:
        for variant, seed, sums in (("agm:random", 0, 100.0), ("agm:random", 1, 110.0), ("agm:agm", 0, 130.0)):
            trial(Tracking(uri, tracking.experiment_id, parent), variant, seed, sums)
    with parent_run(tracking, "run kaleido", {"command": "run"}, {}) as parent:
        for seed in (0, 1):
            trial(Tracking(uri, tracking.experiment_id, parent), "default", seed)
    trial(tracking, "kpg:scale-fixed", 0, 50.0)
    with parent_run(tracking, "ablate kpg", {"command": "ablate"}, {}) as parent:
        trial(Tracking(uri, tracking.experiment_id, parent), "kpg:kaleido", 0, 60.0)
    return uri


def outside_every_axes(fig: Figure) -> bool:
    """Whether the figure's legend lies within the figure and overlaps none of its axes."""
    fig.draw_without_rendering()
    legend = fig.legends[0].get_window_extent()
    inside = fig.bbox.x0 <= legend.x0 and legend.x1 <= fig.bbox.x1 and fig.bbox.y0 <= legend.y0
    return inside and not any(legend.overlaps(ax.get_window_extent()) for ax in fig.axes)


def top_level_runs(uri: str) -> list[str]:
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("plots").experiment_id])
    return sorted(r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags)


def parent_of(uri: str, variant: str) -> str:
    runs = load_runs(uri, "plots")
    run_id = runs[runs["variant"] == variant]["run_id"].iloc[0]
    return MlflowClient(tracking_uri=uri).get_run(run_id).data.tags["mlflow.parentRunId"]


def test_ablation_bars_are_ours_above_the_papers_each_on_its_own_scale(store: str) -> None:
    fig = ablation_figure(ablation_cells(load_runs(store, "plots"), "agm", "kaleido", Samples(store)), "agm", "synth")
    ours, paper = fig.axes[0], fig.axes[3]  # SumR's column: ours, then the paper's
    assert [bar.get_height() for bar in ours.patches] == pytest.approx([105.0, 130.0])
    error = ours.containers[0].lines[2][0].get_segments()[0]  # the Random bar's error bar: 2 seeds, sd/sqrt(2) = 5
    assert error[1][1] - error[0][1] == pytest.approx(2 * T_975_1 * 5.0, rel=1e-6)
    assert [bar.get_height() for bar in paper.patches] == [299.5, 319.52]  # the paper's SumR
    assert ours.get_ylim()[1] < 200 < paper.get_ylim()[1]  # ours are not drawn on the paper's scale
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "SumR, kbench",
        "SumCLS, kbench",
        "SumCAP, kbench",
        "SumR, paper",
        "SumCLS, paper",
        "SumCAP, paper",
    ]
    title = fig.get_suptitle().replace("\n", " ")
    assert "Random: mean ± 95% t-interval over seeds, n=2 seeds; AGM: one seed (n=1), no interval" in title
    assert outside_every_axes(fig)
    labels = [t for t in paper.get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in labels] == ["Random", "AGM"]
    assert all(fig.bbox.contains(*corner) for t in labels for corner in t.get_window_extent().corners())


def test_curves_are_a_panel_per_loss_and_a_line_per_seed() -> None:
    seeds = {
        f"seed {s}": {
            "pretrain/rr_acc": [(1, 0.3), (2, 0.6)],
            "pretrain/rr_loss": [(1, 1.0), (2, 0.5)],
            "pretrain/mlm_loss": [(1, 9.0 + s), (2, 8.0)],
        }
        for s in (0, 1)
    }
    fig = curves_figure(seeds, "t")
    assert [ax.get_title() for ax in fig.axes] == ["MLM loss", "RR loss", "RR accuracy"]
    mlm = fig.axes[0]
    assert [line.get_ydata().tolist() for line in mlm.lines] == [[9.0, 8.0], [10.0, 8.0]]
    assert fig.axes[1].get_ylim()[1] < 2  # RR's loss is not on MLM's scale
    assert outside_every_axes(fig) and [t.get_text() for t in fig.legends[0].get_texts()] == ["seed 0", "seed 1"]
    assert all(tick == int(tick) for ax in fig.axes for tick in ax.get_xticks())
    # any entry's objectives: Fig. 7's first, then the others (ViLBERT's MRM, FashionBERT's MPFC) by name
    history = {f"pretrain/{t}_loss": [(1, 1.0)] for t in ("mrm", "itm", "mpfc", "mlm")} | {"pretrain/loss": [(1, 3.0)]}
    titles = [ax.get_title() for ax in curves_figure({"seed 0": history}, "t").axes]
    assert titles == ["MLM loss", "ITM loss", "MPFC loss", "MRM loss"]


def test_figures_never_overwrite_and_attach_to_the_invocations_run(store: str, tmp_path: Path) -> None:
    before = top_level_runs(store)
    first = plot_ablation(store, "plots", "agm", tmp_path, fmt="svg")
    second = plot_ablation(store, "plots", "agm", tmp_path, fmt="svg")
    paths = [first[0].path, second[0].path]
    assert paths[0] != paths[1] and sorted(tmp_path.iterdir()) == sorted(paths)
    assert all(p.name.startswith("ablation-agm-default-synth-") and p.suffix == ".svg" for p in paths)
    assert [p.stat().st_mode & 0o777 for p in paths] == [0o644, 0o644]
    assert "SumR, kbench" in paths[0].read_text() and "SumR, paper" in paths[0].read_text()  # text, not paths
    parent = parent_of(store, "agm:agm")
    assert first[0].run_id == second[0].run_id == parent
    listed = [a.path for a in MlflowClient(tracking_uri=store).list_artifacts(parent, "plots")]
    assert sorted(listed) == sorted(f"plots/{p.name}" for p in paths)
    [kpg] = plot_ablation(store, "plots", "kpg", tmp_path)
    assert kpg.run_id is None and kpg.note.endswith("not logged to MLflow: the runs it shows come from 2 invocations")
    assert top_level_runs(store) == before  # no plot-... run


def test_save_adds_a_counter_within_the_same_second(tmp_path: Path) -> None:
    fig = curves_figure({"seed 0": {"pretrain/rr_loss": [(1, 1.0), (2, 0.5)]}}, "t")
    paths = [save(fig, tmp_path, "c", "png") for _ in range(3)]
    assert len(set(paths)) == 3 and all(p.read_bytes().startswith(PNG) for p in paths)
    data = paths[0].read_bytes()
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (int(fig.get_figwidth() * 200), int(fig.get_figheight() * 200))


def test_plot_curves_cli_writes_a_pdf_to_kbench_results(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["plot", "--curves", "--format", "pdf", "--tracking-uri", store, "--experiment", "plots"]
    assert main(argv) == 0
    [path] = (tmp_path / "kbench-results").iterdir()
    assert path.name.startswith("curves-kaleido-default-synth-") and path.read_bytes().startswith(PDF)
    [plot] = plot_curves(store, "plots", tmp_path / "more")
    parent = parent_of(store, "default")
    assert plot.run_id == parent and plot.path.suffix == ".png"
    listed = [a.path for a in MlflowClient(tracking_uri=store).list_artifacts(parent, "plots")]
    assert sorted(listed) == sorted(f"plots/{p.name}" for p in (path, plot.path))


def test_matplotlib_font_cache_line_is_kept_off_the_terminal() -> None:
    assert logging.getLogger("matplotlib.font_manager").getEffectiveLevel() > logging.WARNING


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
        wait_for_ok(f"{url}/health", tries=120)
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


def living() -> dict[int, int]:
    """Every living (not zombie) process and its parent, read from /proc (psutil is not a dependency)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    return parents


def descendants(pid: int) -> set[int]:
    parents, found, frontier = living(), set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.mark.slow
def test_kbench_ui_stops_with_its_server_on_sigterm(tmp_path: Path) -> None:
    """``kill PID`` of kbench ui leaves no server serving; the terminal has no request lines nor warnings."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    open_experiment(store, "kbench")
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "kbench", "ui", "--port", str(port), "--tracking-uri", store],
        env={**os.environ, "KBENCH_HOME": str(tmp_path / "home")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    server: set[int] = set()
    try:
        wait_for_ok(f"http://127.0.0.1:{port}/", tries=240)
        server = descendants(ui.pid)
        assert server, "kbench ui started no server"
        ui.send_signal(15)
        assert ui.wait(timeout=60) == 0
        out, err = ui.communicate()
        assert not server & living().keys()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        assert out.startswith(f"MLflow UI of {store} at http://127.0.0.1:{port}") and len(out.splitlines()) == 1
        assert err == ""
        assert "GET /" not in (tmp_path / "home" / "ui" / f"server-{port}.log").read_text()
    finally:
        for pid in server & living().keys():
            os.kill(pid, 9)
        ui.kill()
        ui.wait()


def wait_for_ok(url: str, tries: int) -> None:
    """Poll ``url`` every half second, up to ``tries`` times, until it answers 200 (a server coming up)."""
    for _ in range(tries):
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.5)
