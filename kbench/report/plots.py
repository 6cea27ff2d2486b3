"""Figures from MLflow runs alone: Table 4's blocks as bars with intervals and the paper's values marked, and
the per-epoch pre-training curves of each pretext task (the paper's Fig. 7). PNG files, also logged to MLflow."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # the object API: files only, no pyplot state, no window
from mlflow.tracking import MlflowClient

from kbench.core.errors import KbenchError
from kbench.core.paths import atomic_path
from kbench.engine.ablations import BLOCKS, blocks
from kbench.engine.tracking import Tracking, TrialRun, open_experiment
from kbench.report.selection import select
from kbench.report.tables import AblationCell, Samples, ablation_cells, load_runs

SUMS = ("SumR", "SumCLS", "SumCAP")  # the paper's summary of each task family
CURVES = ("mlm", "itm", "rr", "jps", "cp", "g2cm", "b2cm")  # Fig. 7's order; other entries' objectives follow


def ablation_figure(cells: dict[str, dict[str, AblationCell]], block: str) -> Figure:
    """One panel per sum: a bar per variant (ours, 95 % interval as error bar) and the paper's value as a marker."""
    labels = [v.label for v in BLOCKS[block]]
    fig = Figure(figsize=(4.2 * len(SUMS), 3.6), layout="constrained")
    axes = fig.subplots(1, len(SUMS))
    for ax, metric in zip(axes, SUMS, strict=True):
        row = [cells[metric][label] for label in labels]
        means = [c.ours[0] for c in row]
        errors = [c.ours[1] or 0.0 for c in row]
        ax.bar(labels, means, yerr=errors, capsize=4, color="#4c72b0", label="kbench (mean ± 95% CI)")
        ax.scatter(labels, [c.paper for c in row], marker="D", color="black", zorder=3, label="paper")
        ax.set_title(metric)
        ax.tick_params(axis="x", labelrotation=30)
    axes[0].legend(loc="lower left", fontsize="small")
    fig.suptitle(f"Table 4: {block.upper()} ablation")
    return fig


def curves_figure(history: dict[str, list[tuple[int, float]]], title: str) -> Figure:
    """Losses and accuracies of each pretext task (every ``pretrain/<task>_loss`` or ``_acc`` logged) per epoch."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    losses, accuracies = fig.subplots(1, 2)
    logged = {k.removeprefix("pretrain/").rsplit("_", 1)[0] for k in history if k.endswith(("_loss", "_acc"))}
    for task in [t for t in CURVES if t in logged] + sorted(logged - set(CURVES)):
        for ax, kind in ((losses, "loss"), (accuracies, "acc")):
            points = history.get(f"pretrain/{task}_{kind}")
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], marker=".", label=task.upper())
    for ax, name in ((losses, "loss"), (accuracies, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(f"pre-training {name}")
        if ax.lines:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def plot_ablation(uri: str, experiment: str, block: str, out_dir: Path, model: str = "kaleido") -> list[Path]:
    """``kbench plot --ablation BLOCK`` (``all`` for every block): one PNG per block, logged to a plot run."""
    chosen = select(load_runs(uri, experiment), None, None)
    runs, profile, dataset = chosen.runs, chosen.profile, chosen.dataset
    samples = Samples(uri)
    paths = []
    for name in blocks(block):
        runs_of = runs[runs["variant"].str.startswith(f"{name}:")]
        if runs_of.empty:
            raise KbenchError(f"no finished {name} ablation runs; run `kbench ablate {name}` first")
        fig = ablation_figure(ablation_cells(runs_of, name, model, samples), name)
        paths.append(save(fig, out_dir / f"ablation-{name}-{profile}-{dataset}.png"))
    _log(uri, experiment, paths, {"plot": f"ablation:{block}", "profile": profile, "dataset": dataset})
    return paths


def plot_curves(uri: str, experiment: str, out_dir: Path, model: str = "kaleido") -> list[Path]:
    """``kbench plot --curves``: the newest finished default run of ``model``; the PNG goes to that run too."""
    chosen = select(load_runs(uri, experiment), None, None)
    runs, profile, dataset = chosen.runs, chosen.profile, chosen.dataset
    mine = runs[(runs["model"] == model) & (runs["variant"] == "default")]
    if mine.empty:
        raise KbenchError(f"no finished {model} run with profile {profile!r}; run `kbench run --model {model}` first")
    run = mine.iloc[0]
    client = MlflowClient(tracking_uri=uri)
    keys = [k for k in run.index if k.startswith("pretrain/") and not pd.isna(run[k])]
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run["run_id"], k)] for k in keys}
    title = f"{model} pre-training, profile {profile}, dataset {dataset}, seed {run['seed']}"
    path = save(curves_figure(history, title), out_dir / f"curves-{model}-{profile}-{dataset}.png")
    client.log_artifact(run["run_id"], str(path))
    return [path]


def _log(uri: str, experiment: str, paths: list[Path], tags: dict[str, str]) -> None:
    tracking = Tracking(uri, open_experiment(uri, experiment))
    with TrialRun(tracking, f"plot-{time.strftime('%Y%m%d-%H%M%S')}", {"command": "plot", **tags}) as run:
        for path in paths:
            run.client.log_artifact(run.run_id, str(path))
