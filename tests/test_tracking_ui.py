"""What MLflow's users expect of kbench's runs: plain store paths, an experiment the UI opens on its runs, parent
runs named after what they ran with the mean of their trials' metrics, confusion heatmaps, and the UI itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kbench.core.errors import KbenchError
from kbench.core.tracking_store import tracking_uri
from kbench.engine.heatmaps import confusion_figure
from kbench.engine.runner import ablation_specs, invocation_name, model_specs
from kbench.engine.tracking import (
    EXPERIMENT_KIND,
    Tracking,
    TrialRun,
    open_experiment,
    parent_run,
    summarize,
)

ROOT = Path(__file__).resolve().parents[1]


def test_plain_paths_become_sqlite_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert tracking_uri("./my.db") == f"sqlite:///{tmp_path / 'my.db'}"
    assert tracking_uri(str(tmp_path / "runs")) == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert tracking_uri("sqlite:///x.db") == f"sqlite:///{tmp_path / 'x.db'}"  # relative: made absolute
    assert tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "stores/a.sqlite")
    assert tracking_uri() == f"sqlite:///{tmp_path / 'stores' / 'a.sqlite'}"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(KbenchError, match="not a SQLite one"):
        tracking_uri("notes.txt")
    uri = tracking_uri("nested/dir/my.db")
    open_experiment(uri, "kbench")  # the directory is made, the store created
    assert (tmp_path / "nested" / "dir" / "my.db").is_file()


def test_experiment_is_marked_as_model_training(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    old = client.create_experiment("old")  # made before kbench tagged experiments
    assert open_experiment(uri, "old") == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND[0]] == "custom_model_development"
    new = open_experiment(uri, "kbench")
    assert client.get_experiment(new).tags[EXPERIMENT_KIND[0]] == "custom_model_development"


def test_parent_runs_are_named_after_what_they_ran() -> None:
    tasks = ["itr", "tir", "cr", "sub", "fc"]
    assert invocation_name("run", model_specs(["kaleido"], [0, 1, 2]), tasks, "default") == (
        "kaleido · all tasks · default · 3 seeds"
    )
    assert invocation_name("run", model_specs(["kaleido", "clip"], [0]), ["itr"], "smoke") == (
        "kaleido, clip · itr · smoke · 1 seed"
    )
    assert invocation_name("ablate", ablation_specs("kaleido", ["kpg"], [0]), tasks, "default") == (
        "ablate kpg · kaleido · default · 1 seed"
    )


def test_parent_run_carries_the_mean_over_seeds(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = Tracking(uri, open_experiment(uri, "kbench"))
    with parent_run(tracking, "kaleido · itr · smoke · 2 seeds", {"command": "run"}, {}) as parent_id:
        ids = []
        for seed, r1 in ((0, 10.0), (1, 20.0)):
            tags = {"model": "kaleido", "variant": "kpg:kaleido+sod", "seed": seed}
            with TrialRun(Tracking(uri, tracking.experiment_id, parent_id), f"kaleido/seed{seed}", tags) as run:
                run.log_metrics({"itr/R1": r1, "sums/SumR": 3 * r1})
                ids.append(run.run_id)
        with TrialRun(Tracking(uri, tracking.experiment_id, parent_id), "clip/seed0", {"model": "clip"}) as run:
            run.log_metrics({"itr/R1": 4.0})
            ids.append(run.run_id)
        summary = summarize(tracking, parent_id, ids)
    assert summary == {
        "kaleido/kpg:kaleido_sod/itr/R1": 15.0,
        "kaleido/kpg:kaleido_sod/sums/SumR": 45.0,
        "clip/itr/R1": 4.0,
    }
    assert MlflowClient(uri).get_run(parent_id).data.metrics == summary
    assert summarize(tracking, parent_id, ids[:2]) == {"itr/R1": 15.0, "sums/SumR": 45.0}  # one trial group


def test_confusion_matrix_heatmap_is_logged_as_png(tmp_path: Path) -> None:
    csv = "true,dress,shirt\ndress,3,1\nshirt,0,4\n"
    figure = confusion_figure(csv, "cr: kaleido/seed0")
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["dress", "shirt"]
    assert sorted(t.get_text() for t in axes.texts) == ["1", "3", "4"]
    assert axes.get_title() == "cr: kaleido/seed0 (n = 8)"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with TrialRun(Tracking(uri, open_experiment(uri, "kbench")), "t", {}) as run:
        run.log_image("confusion_cr.png", figure)
    local = MlflowClient(uri).download_artifacts(run.run_id, "confusion_cr.png", str(tmp_path))
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium (apt-get install chromium) to render the UI")
def test_screenshots_show_the_runs_table_not_traces(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ui_screenshots.py"), "--out", str(tmp_path / "img")],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("mlflow-runs", "mlflow-parent-run", "mlflow-child-run"):
        assert (tmp_path / "img" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
