"""The paper's tables rebuilt from MLflow runs alone, with the published numbers beside ours.

One finished MLflow run is one cell source (a model, variant and seed) and a cell aggregates the seeds of one
configuration (``kbench.report.selection``). Several seeds are shown as mean ± the half-width of a 95 % t-interval,
one seed as its value ± half the width of a 95 % bootstrap interval over its test items
(``kbench.metrics.significance``, from the run's per-sample records). Ablation changes are tested with a paired
randomization test over items and seeds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
import pandas as pd
from tabulate import tabulate

from kbench.core.config import Config
from kbench.core.errors import KbenchError
from kbench.core.tracking_store import finished_runs
from kbench.engine.ablations import BLOCKS, blocks
from kbench.metrics import significance
from kbench.metrics.sums import PAPER_TASKS
from kbench.report import latex
from kbench.report.selection import Selection, select

FORMATS = ("md", "latex", "csv", "html")
STYLES = {"md": "github", "html": "html"}  # tabulate's; LaTeX is kbench.report.latex's

# Our zoo names -> the row names of the paper's tables.
PAPER_ROWS = {
    "fashionbert": "FashionBERT",
    "kaleido": "Kaleido-BERT",
    "vilbert": "ViLBERT",
    "vlbert": "VL-BERT",
    "imagebert": "ImageBERT",
    "oscar": "OSCAR",
}
# Entries that stand in for the paper's detector-based models with 8x8 patches: labelled "<paper name>-style".
DETECTOR_FREE = ("vilbert", "vlbert", "imagebert", "oscar")
OTHER_ROWS = {"clip": "CLIP-style"}  # zoo entries the paper has no row for
T_INTERVAL, BOOTSTRAP = "t over seeds", "bootstrap"


@dataclass(frozen=True)
class Column:
    """One metric column: its header, our MLflow metric and the key of the published number."""

    header: str
    metric: str
    paper: str

    @property
    def decimals(self) -> int:
        return 3 if "macro_f" in self.metric else 2


RETRIEVAL = (
    Column("ITR R@1", "itr/R1", "ITR_R@1"),
    Column("ITR R@5", "itr/R5", "ITR_R@5"),
    Column("ITR R@10", "itr/R10", "ITR_R@10"),
    Column("TIR R@1", "tir/R1", "TIR_R@1"),
    Column("TIR R@5", "tir/R5", "TIR_R@5"),
    Column("TIR R@10", "tir/R10", "TIR_R@10"),
    Column("SumR", "sums/SumR", "SumR"),
)
CLASSIFICATION_CAPTIONING = (
    Column("CR ACC", "cr/acc", "CR_ACC"),
    Column("CR macro-F", "cr/macro_f", "CR_macroF"),
    Column("SUB ACC", "sub/acc", "SUB_ACC"),
    Column("SUB macro-F", "sub/macro_f", "SUB_macroF"),
    Column("SumCLS", "sums/SumCLS", "SumCLS"),
    Column("BLEU-4", "fc/BLEU-4", "BLEU-4"),
    Column("METEOR", "fc/METEOR", "METEOR"),
    Column("ROUGE-L", "fc/ROUGE-L", "ROUGE-L"),
    Column("CIDEr", "fc/CIDEr", "CIDEr"),
    Column("SumCAP", "sums/SumCAP", "SumCAP"),
)
ABLATION_METRICS = RETRIEVAL + CLASSIFICATION_CAPTIONING  # Table 4's rows, in its order
MAIN_TABLES = (
    ("Table 2: retrieval", RETRIEVAL, "table2_retrieval"),
    (
        "Table 3: category recognition and captioning",
        CLASSIFICATION_CAPTIONING,
        "table3_classification_captioning",
    ),
)


@cache
def published() -> dict:
    """The paper's numbers (Tables 2-4), shipped with kbench."""
    return json.loads(resources.files("kbench.published").joinpath("kaleido-bert-tables.json").read_text())


def load_runs(uri: str, experiment: str) -> pd.DataFrame:
    """The finished trial runs of ``experiment`` (not ``kbench tune``'s samples), one row per run, newest first."""
    rows = [
        {
            "run_id": r.run_id,
            "start_time": r.start_time,
            "artifact_uri": r.artifact_uri,
            **{k.removeprefix("kbench."): v for k, v in r.tags.items() if k.startswith("kbench.")},
            **r.metrics,
            "params": r.params,
        }
        for r in finished_runs(uri, experiment)
        if "kbench.model" in r.tags and "kbench.search" not in r.tags
    ]
    return pd.DataFrame(rows) if rows else pd.DataFrame()


def _limited(limit: int | None) -> str:
    return f", limited to the first {limit} products of each split" if limit else ""


def summarise(values: pd.Series) -> tuple[float, float | None, int]:
    """Mean, 95 % t-interval half-width (None for one value) and count of the non-missing values."""
    v = values.dropna().to_numpy(dtype=float)
    if len(v) == 0:
        return float("nan"), None, 0
    if len(v) == 1:
        return float(v[0]), None, 1
    from scipy.special import stdtrit  # here: a table of single-seed runs needs no scipy

    half = stdtrit(len(v) - 1, 0.975) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(half), len(v)


Cell = tuple[float | None, float | None]  # (value, 95 % half-width or None)


def label(model: str) -> str:
    """Our row's name: the paper's model name with "(kbench)", "-style" for detector-free stand-ins; another
    entry's ``display_name``, else the name it ran under (the class of a ``package.module:Class`` name)."""
    if model in PAPER_ROWS:
        return f"{PAPER_ROWS[model]}{'-style' if model in DETECTOR_FREE else ''} (kbench)"
    return f"{OTHER_ROWS.get(model) or display_name(model)} (kbench)"


def display_name(model: str) -> str:
    """A zoo entry's ``display_name`` where it sets one and can be loaded here, else its name."""
    from kbench.models.zoo import MODELS  # here: reading a table imports no model (nor torch) for kbench's own rows

    try:
        name = MODELS.get(model).display_name
    except KbenchError:  # a plug-in this process cannot import: the runs still have a row
        name = ""
    return name or model.rpartition(":")[2]


class Samples:
    """The per-sample records of runs (``samples/<task>.jsonl`` artifacts) as ``significance.Items``, read once."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._runs: dict[str, dict[str, significance.Items]] = {}

    def of(self, run: pd.Series) -> dict[str, significance.Items]:
        """Items by task of the tasks ``run`` logged samples for (none for runs older than per-sample records)."""
        from kbench.tasks.samples import read_samples

        if run["run_id"] not in self._runs:
            found = {}
            for task in significance.KINDS:
                try:
                    records = read_samples(self.uri, run["run_id"], task, run.get("artifact_uri")).to_dict("records")
                except KbenchError:  # the run has none for this task
                    continue
                corpus = {m: run[f"fc/{m}"] for m in significance.CORPUS_SCORES if task == "fc" and f"fc/{m}" in run}
                found[task] = significance.items(task, records, corpus)
            self._runs[run["run_id"]] = found
        return self._runs[run["run_id"]]


def interval(runs: pd.DataFrame, metric: str, samples: Samples) -> tuple[float, float | None, int, str | None]:
    """Value, 95 % half-width, seed count and the interval's kind (``T_INTERVAL``, ``BOOTSTRAP`` or None when there
    is none: one seed without per-sample records) of ``metric`` over ``runs``."""
    mean, half, n = summarise(runs.get(metric, pd.Series(dtype=float)))
    if n >= 2:
        return mean, half, n, T_INTERVAL
    if n == 1:
        run = samples.of(runs[runs[metric].notna()].iloc[0])
        if metric in significance.TERMS and significance.has(run, metric):  # not for a user's task's metrics
            return mean, significance.half_width(significance.bootstrap(run, metric)), n, BOOTSTRAP
    return mean, None, n, None


def main_tables(runs: pd.DataFrame, samples: Samples) -> list[tuple[str, list[Column], list[dict]]]:
    """Tables 2 and 3: for each of our models, the paper's row (when the paper has one) then ours; then, where runs
    ran tasks beyond the paper's five, their metrics by model (``OTHER_TASKS``)."""
    order = list(PAPER_ROWS)
    runs = runs[runs["variant"] == "default"]  # ablation variants have their own tables
    models = sorted(runs["model"].unique(), key=lambda m: (order.index(m) if m in order else len(order), m))
    out = []
    for title, columns, key in MAIN_TABLES:
        paper = published()[key]
        rows = []
        for model in models:
            name = PAPER_ROWS.get(model)
            if name in paper:
                cells = {c.header: (paper[name][c.paper], None) for c in columns}
                rows.append({"model": name, "source": "paper", "seeds": "", "interval": "", **cells})
            rows.append(_ours(runs[runs["model"] == model], model, columns, samples))
        out.append((title, list(columns), rows))
    if columns := other_columns(runs):
        rows = [_ours(runs[runs["model"] == model], model, columns, samples) for model in models]
        out.append((OTHER_TASKS, columns, rows))
    return out


OTHER_TASKS = "Other tasks"  # the metrics of tasks beyond the paper's five (the user's cards), by model


def other_columns(runs: pd.DataFrame) -> list[Column]:
    """A column per logged metric of each task the runs ran beyond the paper's five (their ``tasks`` tags), in the
    order of its card where this process knows the card, else by name; fine-tuning curves left out."""
    from kbench.tasks import TASKS

    named = {t for tags in runs.get("tasks", pd.Series(dtype=str)).dropna() for t in tags.split(",")}
    columns = []
    for task in sorted(named - set(PAPER_TASKS)):
        logged = sorted(c.split("/", 1)[1] for c in runs.columns if c.startswith(f"{task}/"))
        logged = [m for m in logged if not m.startswith("finetune_")]
        card = list(TASKS.get(task).metrics) if task in TASKS else []
        names = [m for m in card if m in logged] + [m for m in logged if m not in card]
        columns += [Column(f"{task} {m}", f"{task}/{m}", "") for m in names]
    return columns


def _ours(mine: pd.DataFrame, model: str, columns: Sequence[Column], samples: Samples) -> dict:
    """Our row of ``model`` (its runs ``mine``): a cell per column, the seeds and the kind of interval."""
    found = {c.header: interval(mine, c.metric, samples) for c in columns}
    kinds = {kind for *_, kind in found.values() if kind}
    kind = " and ".join(sorted(kinds)) if kinds else "n/a"
    cells = {h: (value, half) for h, (value, half, _, _) in found.items()}
    return {"model": label(model), "source": "kbench", "seeds": str(len(mine)), "interval": kind, **cells}


def _fmt(cell: Cell, column: Column) -> str:
    value, half = cell
    if value is None or np.isnan(value):
        return "–"
    text = f"{value:.{column.decimals}f}"
    return text if half is None else f"{text} ± {half:.{column.decimals}f}"


IDENTITY = ("model", "source", "seeds", "interval")  # the columns before the metrics


def _csv(tables: list[tuple[str, list[Column], list[dict]]]) -> str:
    """One CSV line per (model, source) of any table, in order of first appearance, with a value and a CI column per
    metric of every table; a cell the line's table lacks (the paper reports no such row) is empty."""
    lines: dict[tuple[str, str], dict] = {}
    for _, _, rows in tables:
        for r in rows:
            lines.setdefault((r["model"], r["source"]), {k: r[k] for k in IDENTITY})
    for _, columns, rows in tables:
        of = {(r["model"], r["source"]): r for r in rows}
        for line, data in lines.items():
            for c in columns:
                value, half = of[line][c.header] if line in of else (None, None)
                data[c.header], data[f"{c.header} CI95"] = value, half
    return pd.DataFrame(list(lines.values())).to_csv(index=False, float_format="%.6g")


def render(tables: list[tuple[str, list[Column], list[dict]]], fmt: str, caption: str) -> str:
    """Markdown or LaTeX (booktabs) text of ``tables``, or one CSV with a value and a CI column per metric."""
    if fmt == "csv":
        return _csv(tables)
    if fmt == "latex":
        identity = {"model": "l", "source": "l", "seeds": "r", "interval": "l"}
        parts = [
            latex.main_table(title, caption, identity, [(c.header, c.decimals) for c in columns], rows)
            for title, columns, rows in tables
        ]
        return "\n\n".join(parts) + "\n"
    parts = []
    for title, columns, rows in tables:
        frame = pd.DataFrame(
            [
                {
                    **{k: r[k] for k in IDENTITY},
                    **{c.header: _fmt(r[c.header], c) for c in columns},
                }
                for r in rows
            ]
        )
        parts.append(_titled(frame, fmt, title, caption))
    return "\n\n".join(parts) + "\n"


def _titled(frame: pd.DataFrame, fmt: str, title: str, caption: str) -> str:
    """One table as Markdown or HTML, with its title and caption."""
    body = tabulate(frame, headers="keys", tablefmt=STYLES[fmt], showindex=False, disable_numparse=True)
    if fmt == "md":
        return f"### {title}\n{caption}\n\n{body}"
    return f"<h3>{title}</h3>\n<p>{caption}</p>\n{body}"


def build_main(
    uri: str,
    experiment: str,
    fmt: str,
    profile: str | None = None,
    dataset: str | None = None,
    limit: int | None = None,
    config_hash: str | None = None,
    match: Config | None = None,
) -> str:
    """``kbench table --main``: Tables 2 and 3 from the runs of ``experiment`` (``select`` says which)."""
    _check_format(fmt)
    chosen = select(load_runs(uri, experiment), profile, dataset, limit, config_hash, match)
    tables = main_tables(chosen.runs, Samples(uri))
    kbench_rows = [r for _, _, rows in tables for r in rows if r["source"] == "kbench"]
    caption = (
        f"{_setting(chosen, limit)}; ours as mean ± 95% interval: a t-interval over seeds where there are 2 or more, "
        f"else a bootstrap over test items ({significance.RESAMPLES:,} resamples)"
        f"{_without_samples(any(r['interval'] == 'n/a' and r['seeds'] == '1' for r in kbench_rows))}; "
        "X-style (kbench): detector-free stand-ins (8x8 patches) for the paper's detector-based models; "
        f"paper: Kaleido-BERT (CVPR 2021).{_notes(chosen)}"
    )
    return render(tables, fmt, caption)


def _setting(chosen: Selection, limit: int | None) -> str:
    """Where the runs come from: profile, dataset, limit and protocol."""
    return (
        f"kbench: profile {chosen.profile}, dataset {chosen.dataset}{_limited(limit)}, "
        f"protocol {_protocols(chosen.runs)}"
    )


def _without_samples(missing: bool) -> str:
    return "; runs without per-sample records have no interval (n/a)" if missing else ""


def _notes(chosen: Selection) -> str:
    """The selection's notes (runs under other configurations left out), as caption sentences."""
    return "".join(f" {note}." for note in chosen.notes)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise KbenchError(f"unknown table format {fmt!r}; use one of {', '.join(FORMATS)}")


def _protocols(runs: pd.DataFrame) -> str:
    return ", ".join(sorted({p for p in runs.get("protocol", pd.Series(dtype=str)).dropna().unique()})) or "n/a"


@dataclass
class AblationCell:
    """One (metric, variant) cell: ours over seeds, the paper's, each relative to the block's baseline column."""

    ours: Cell
    seeds: int
    relative: float | None  # percent change of our mean against the baseline's
    p: float | None  # paired randomization test of the change over items and seeds (None: untested)
    paper: float | None
    paper_relative: float | None

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < significance.ALPHA


def ablation_cells(runs: pd.DataFrame, block: str, model: str, samples: Samples) -> dict[str, dict[str, AblationCell]]:
    """metric header -> variant label -> cell, metrics and variants in the paper's order."""
    variants = BLOCKS[block]
    paper = published()["table4_ablations"]
    of = {v.label: runs[(runs["model"] == model) & (runs["variant"] == v.tag)] for v in variants}
    out: dict[str, dict[str, AblationCell]] = {}
    for column in ABLATION_METRICS:
        stats_of = {v.label: interval(of[v.label], column.metric, samples) for v in variants}
        base, base_paper = stats_of[variants[0].label], paper[variants[0].paper][column.paper]
        row = {}
        for i, v in enumerate(variants):
            mean, half, n, _ = stats_of[v.label]
            published_value = paper[v.paper][column.paper]
            row[v.label] = AblationCell(
                ours=(mean, half),
                seeds=n,
                relative=None if i == 0 else _relative(mean, base[0]),
                p=None if i == 0 else paired_p(of[v.label], of[variants[0].label], column.metric, samples),
                paper=published_value,
                paper_relative=None if i == 0 else _relative(published_value, base_paper),
            )
        out[column.header] = row
    return out


def paired_p(a: pd.DataFrame, b: pd.DataFrame, metric: str, samples: Samples) -> float | None:
    """p of the paired randomization test of ``metric`` between the runs ``a`` and ``b``, paired by seed; None
    without common seeds or per-sample records."""
    seeds = sorted(set(a["seed"]) & set(b["seed"]), key=int)
    pairs = [(samples.of(a[a["seed"] == s].iloc[0]), samples.of(b[b["seed"] == s].iloc[0])) for s in seeds]
    if not pairs or not all(significance.has(x, metric) and significance.has(y, metric) for x, y in pairs):
        return None
    return significance.compare([x for x, _ in pairs], [y for _, y in pairs], metric, interval=False).p


def _relative(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or np.isnan(value) or np.isnan(base) or base == 0:
        return None
    return 100.0 * (value - base) / abs(base)


def render_ablation(cells: dict[str, dict[str, AblationCell]], block: str, fmt: str, caption: str) -> str:
    """Table 4's block: a row per metric, our value and the paper's per variant, changes against the baseline."""
    labels = [v.label for v in BLOCKS[block]]
    columns = {c.header: c for c in ABLATION_METRICS}
    if fmt == "csv":
        rows = []
        for metric, row in cells.items():
            record: dict[str, object] = {"metric": metric}
            for label in labels:
                cell = row[label]
                record |= {
                    label: cell.ours[0],
                    f"{label} CI95": cell.ours[1],
                    f"{label} seeds": cell.seeds,
                    f"{label} change %": cell.relative,
                    f"{label} p": cell.p,
                    f"{label} significant": cell.significant,
                    f"{label} paper": cell.paper,
                    f"{label} paper change %": cell.paper_relative,
                }
            rows.append(record)
        return pd.DataFrame(rows).to_csv(index=False, float_format="%.6g")
    title = f"Table 4: {block.upper()} ablation"
    if fmt == "latex":
        metrics = [(metric, columns[metric].decimals) for metric in cells]
        return latex.ablation_table(title, caption, labels, metrics, cells) + "\n"
    records = []
    for metric, row in cells.items():
        column = columns[metric]
        record = {"metric": metric}
        for label in labels:
            cell = row[label]
            ours = _fmt(cell.ours, column) + _change(cell.relative) + (" *" if cell.significant else "")
            paper = "–" if cell.paper is None else f"{cell.paper:.{column.decimals}f}" + _change(cell.paper_relative)
            record |= {label: ours, f"{label} (paper)": paper}
        records.append(record)
    return _titled(pd.DataFrame(records), fmt, title, caption) + "\n"


def _changes(fmt: str) -> str:
    """How a format shows changes: LaTeX as differences (a percentage of a small baseline misleads)."""
    return "as a difference in the metric's units (Δ)" if fmt == "latex" else "in brackets"


def _change(relative: float | None) -> str:
    return "" if relative is None else f" ({relative:+.1f}%)"


def build_ablation(
    uri: str,
    experiment: str,
    block: str,
    fmt: str,
    profile: str | None = None,
    dataset: str | None = None,
    model: str = "kaleido",
    limit: int | None = None,
    config_hash: str | None = None,
    match: Config | None = None,
) -> str:
    """``kbench table --ablation BLOCK``: one block of Table 4 from the runs of ``experiment``."""
    _check_format(fmt)
    blocks(block)
    chosen = select(load_runs(uri, experiment), profile, dataset, limit, config_hash, match)
    chosen.runs = chosen.runs[chosen.runs["variant"].str.startswith(f"{block}:")]
    chosen.notes = [n for n in chosen.notes if n.startswith(f"{model} {block}:")]
    if chosen.runs.empty:
        raise KbenchError(f"no finished {block} ablation runs; run `kbench ablate {block}` first")
    cells = ablation_cells(chosen.runs, block, model, Samples(uri))
    untested = any(c.p is None and c.relative is not None for row in cells.values() for c in row.values())
    baseline = BLOCKS[block][0].label
    caption = (
        f"{_setting(chosen, limit).replace('kbench:', f'kbench {model}:')}; ours as mean ± 95% interval "
        f"(t over seeds where there are 2 or more, else a bootstrap over test items) with the change against "
        f"{baseline} {_changes(fmt)}; * the change is significant (p < {significance.ALPHA}, paired randomization "
        f"test over test items and seeds, {significance.RESAMPLES:,} resamples)"
        f"{'; changes of runs without per-sample records are not tested' if untested else ''}; "
        f"paper: Kaleido-BERT Table 4.{_notes(chosen)}"
    )
    return render_ablation(cells, block, fmt, caption)
