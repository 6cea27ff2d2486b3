"""Figures from MLflow runs alone: Table 4's blocks as bars, ours beside the paper's, and the per-epoch pre-training
curves of each pretext task (the paper's Fig. 7). PDF, SVG or PNG files that never overwrite earlier ones, attached
to the parent run of the invocation whose runs they show."""

from __future__ import annotations

import logging
import os
import tempfile
import textwrap
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from kbench.core.errors import KbenchError
from kbench.engine.ablations import BLOCKS, blocks
from kbench.report.selection import select
from kbench.report.tables import AblationCell, Samples, ablation_cells, load_runs

logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # its first-use "building the font cache" line
from matplotlib import rc_context  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402  # the object API: files only, no pyplot state, no window
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

SUMS = ("SumR", "SumCLS", "SumCAP")  # the paper's summary of each task family
CURVES = ("mlm", "itm", "rr", "jps", "cp", "g2cm", "b2cm")  # Fig. 7's order; other entries' objectives follow
FORMATS = ("png", "pdf", "svg")
DEFAULT_OUT = Path("kbench-results")  # in the working directory, not the checkout's results/
OURS, PAPER = "#4c72b0", "#999999"
# Embedded TrueType in PDF and real text in SVG: editable by journals and searchable.
STYLE = {"pdf.fonttype": 42, "svg.fonttype": "none"}
CHARACTERS_PER_INCH = 12  # of a title line at the default font size: where titles wrap


@dataclass(frozen=True)
class Plot:
    """A written figure, the parent run it is attached to, or why it is not attached."""

    path: Path
    run_id: str | None
    note: str = ""


def interval_text(cells: dict[str, AblationCell]) -> str:
    """What the error bars of ``cells`` (variant label -> cell) are, with n, e.g. "mean ± 95% t-interval, n=3 seeds";
    variants named only where they differ."""
    described = {label: _interval(cell) for label, cell in cells.items()}
    if len(set(described.values())) == 1:
        return next(iter(described.values()))
    return "; ".join(f"{label}: {text}" for label, text in described.items())


def _interval(cell: AblationCell) -> str:
    if cell.seeds >= 2:
        return f"mean ± 95% t-interval over seeds, n={cell.seeds} seeds"
    if cell.seeds == 1 and cell.ours[1] is not None:
        return "one seed (n=1) ± 95% bootstrap interval over test items"
    return "one seed (n=1), no interval" if cell.seeds == 1 else "no runs"


def ablation_figure(cells: dict[str, dict[str, AblationCell]], block: str, setting: str = "") -> Figure:
    """A column per sum: ours as bars with their intervals above, the paper's values below, each on its own scale
    (the paper's sums are of full-size runs); n and the interval kind in the title, the legend below the panels."""
    labels = [v.label for v in BLOCKS[block]]
    fig = Figure(figsize=(3.4 * len(SUMS), 5.6), layout="constrained")
    axes = fig.subplots(2, len(SUMS), sharex="col", squeeze=False)
    x = np.arange(len(labels))
    for j, metric in enumerate(SUMS):
        row = [cells[metric][label] for label in labels]
        halves = [np.nan if c.ours[1] is None else c.ours[1] for c in row]
        ours, paper = axes[0, j], axes[1, j]
        bars = ours.bar(x, [c.ours[0] for c in row], yerr=halves, capsize=4, color=OURS, label="kbench")
        published = paper.bar(x, [np.nan if c.paper is None else c.paper for c in row], color=PAPER, label="paper")
        ours.set_title(metric)
        ours.set_ylabel(f"{metric}, kbench")
        paper.set_ylabel(f"{metric}, paper")
        paper.set_xticks(x, labels, rotation=30, ha="right", rotation_mode="anchor")
        for ax in (ours, paper):
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
    caption = f"kbench {interval_text(cells[SUMS[0]])}; paper: Kaleido-BERT Table 4, published values"
    head = f"Table 4: {block.upper()} ablation" + (f", {setting}" if setting else "")
    fig.suptitle(f"{_wrapped(head, fig)}\n{_wrapped(caption, fig)}", fontsize="medium")
    fig.legend(
        [bars, published],
        ["kbench (ours), error bar as in the title", "paper (Kaleido-BERT, CVPR 2021)"],
        loc="outside lower center",
        ncols=2,
        frameon=False,
    )
    return fig


def curves_figure(histories: dict[str, dict[str, list[tuple[int, float]]]], title: str) -> Figure:
    """A panel per logged ``pretrain/<task>_loss`` and ``_acc`` (losses first, Fig. 7's task order), a line per seed
    (``histories``: seed -> metric -> (epoch, value)), integer epoch ticks, the legend below the panels."""
    logged = {k for history in histories.values() for k in history if k.endswith(("_loss", "_acc"))}
    tasks = {k.removeprefix("pretrain/").rsplit("_", 1)[0] for k in logged}
    order = [t for t in CURVES if t in tasks] + sorted(tasks - set(CURVES))
    keys = [f"pretrain/{t}_{kind}" for kind in ("loss", "acc") for t in order if f"pretrain/{t}_{kind}" in logged]
    if not keys:
        raise KbenchError("the runs logged no pre-training losses or accuracies (pretrain/<task>_loss)")
    columns = min(4, len(keys))
    rows = -(-len(keys) // columns)
    fig = Figure(figsize=(2.6 * columns + 0.6, 2.3 * rows + 1.0), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    colours = {seed: f"C{i % 10}" for i, seed in enumerate(histories)}
    for ax, key in zip(axes, keys, strict=False):
        task, kind = key.removeprefix("pretrain/").rsplit("_", 1)
        for seed, history in histories.items():
            points = history.get(key, [])
            ax.plot([s for s, _ in points], [v for _, v in points], marker=".", color=colours[seed], label=seed)
        ax.set_title(f"{task.upper()} {'loss' if kind == 'loss' else 'accuracy'}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss" if kind == "loss" else "accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(keys) :]:
        fig.delaxes(ax)
    handles = [Line2D([], [], color=colours[seed], marker=".") for seed in histories]
    fig.legend(handles, list(histories), loc="outside lower center", ncols=min(len(handles), 6), frameon=False)
    fig.suptitle(_wrapped(title, fig), fontsize="medium")
    return fig


def _wrapped(text: str, fig: Figure) -> str:
    return textwrap.fill(text, int(fig.get_figwidth() * CHARACTERS_PER_INCH))


def save(fig: Figure, out_dir: Path, stem: str, fmt: str) -> Path:
    """Write ``fig`` as ``out_dir/<stem>-<time>.<fmt>`` (``-2``, ``-3``... when that name is taken), mode 0644:
    rendered aside, then moved onto a name this call created, so no earlier figure is ever overwritten."""
    if fmt not in FORMATS:
        raise KbenchError(f"unknown figure format {fmt!r}; use one of {', '.join(FORMATS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".{fmt}", dir=out_dir)
    os.close(fd)
    try:
        with rc_context(STYLE):
            fig.savefig(tmp, format=fmt, dpi=200)
        os.chmod(tmp, 0o644)
        stamp, n = time.strftime("%Y%m%d-%H%M%S"), 1
        while True:
            path = out_dir / f"{stem}-{stamp}{'' if n == 1 else f'-{n}'}.{fmt}"
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                n += 1
                continue
            os.replace(tmp, path)
            return path
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def attach(uri: str, path: Path, run_ids: Iterable[str]) -> Plot:
    """Log ``path`` under ``plots/`` of the one parent run of ``run_ids``; where they have none or several, log
    nothing and say why."""
    client = MlflowClient(tracking_uri=uri)
    parents = {client.get_run(r).data.tags.get("mlflow.parentRunId") for r in run_ids}
    if len(parents) == 1 and None not in parents:
        parent = parents.pop()
        client.log_artifact(parent, str(path), "plots")
        return Plot(path, parent)
    why = "have no parent run" if parents == {None} else f"come from {len(parents)} invocations"
    return Plot(path, None, f"{path.name} not logged to MLflow: the runs it shows {why}")


def plot_ablation(
    uri: str, experiment: str, block: str, out_dir: Path = DEFAULT_OUT, model: str = "kaleido", fmt: str = "png"
) -> list[Plot]:
    """``kbench plot --ablation BLOCK`` (``all`` for every block): one figure per block."""
    chosen = select(load_runs(uri, experiment), None, None)
    runs, profile, dataset = chosen.runs, chosen.profile, chosen.dataset
    samples = Samples(uri)
    plots = []
    for name in blocks(block):
        runs_of = runs[(runs["model"] == model) & runs["variant"].str.startswith(f"{name}:")]
        if runs_of.empty:
            raise KbenchError(f"no finished {name} ablation runs; run `kbench ablate {name}` first")
        setting = f"{model}, profile {profile}, dataset {dataset}"
        fig = ablation_figure(ablation_cells(runs_of, name, model, samples), name, setting)
        path = save(fig, out_dir, f"ablation-{name}-{profile}-{dataset}", fmt)
        plots.append(attach(uri, path, runs_of["run_id"]))
    return plots


def plot_curves(
    uri: str, experiment: str, out_dir: Path = DEFAULT_OUT, model: str = "kaleido", fmt: str = "png"
) -> list[Plot]:
    """``kbench plot --curves``: every seed of the newest configuration of ``model``'s default runs."""
    chosen = select(load_runs(uri, experiment), None, None)
    runs, profile, dataset = chosen.runs, chosen.profile, chosen.dataset
    mine = runs[(runs["model"] == model) & (runs["variant"] == "default")]
    if mine.empty:
        raise KbenchError(f"no finished {model} run with profile {profile!r}; run `kbench run --model {model}` first")
    mine = mine.sort_values("seed", key=lambda s: s.astype(int))
    client = MlflowClient(tracking_uri=uri)
    histories = {}
    for _, run in mine.iterrows():
        keys = [k for k in run.index if k.startswith("pretrain/") and not pd.isna(run[k])]
        history = {k: [(m.step, m.value) for m in client.get_metric_history(run["run_id"], k)] for k in keys}
        histories[f"seed {run['seed']}"] = {k: sorted(points) for k, points in history.items()}
    seeds = f"{len(mine)} seed{'s' if len(mine) > 1 else ''}"
    title = f"{model} pre-training, profile {profile}, dataset {dataset}, {seeds}, a line per seed"
    path = save(curves_figure(histories, title), out_dir, f"curves-{model}-{profile}-{dataset}", fmt)
    return [attach(uri, path, mine["run_id"])]
