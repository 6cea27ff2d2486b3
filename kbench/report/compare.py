"""``kbench compare A B``: two runs (or two models' seeds) metric by metric, with paired intervals and p-values.

Each side is a run id or ``model[:variant]``, the newest finished runs of that model and variant under its
newest configuration (``kbench.report.selection``), all their seeds. Two single runs are paired with each other;
otherwise runs are paired by seed. Differences, intervals and p-values come from ``kbench.metrics.significance``
over the items both sides scored.
"""

from __future__ import annotations

import pandas as pd
from tabulate import tabulate

from kbench.core.errors import KbenchError
from kbench.metrics import significance
from kbench.report.selection import select
from kbench.report.tables import ABLATION_METRICS, Samples, load_runs

FORMATS = ("md", "csv")


def side(runs: pd.DataFrame, spec: str, profile: str | None, dataset: str | None, limit: int | None) -> pd.DataFrame:
    """The runs ``spec`` names: one run by id, else the newest configuration's runs of ``model[:variant]``."""
    if spec in set(runs["run_id"]):
        return runs[runs["run_id"] == spec]
    model, _, variant = spec.partition(":")
    chosen = select(runs, profile, dataset, limit).runs
    found = chosen[(chosen["model"] == model) & (chosen["variant"] == (variant or "default"))]
    if found.empty:
        raise KbenchError(f"{spec!r} is neither a run id nor a model[:variant] with finished runs")
    return found


def pairs(a: pd.DataFrame, b: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """Two single runs as one pair, else the runs of each seed both sides have."""
    if len(a) == 1 and len(b) == 1:
        return [(a.iloc[0], b.iloc[0])]
    seeds = sorted(set(a["seed"]) & set(b["seed"]), key=int)
    if not seeds:
        raise KbenchError(f"no seed in common to pair: A has {_seeds(a)}, B has {_seeds(b)}")
    return [(a[a["seed"] == s].iloc[0], b[b["seed"] == s].iloc[0]) for s in seeds]


def _seeds(runs: pd.DataFrame) -> str:
    return ", ".join(sorted(runs["seed"].astype(str).unique(), key=int))


def _describe(runs: pd.DataFrame) -> str:
    first = runs.iloc[0]
    variant = "" if first["variant"] == "default" else f":{first['variant']}"
    seeds = f"seed{'s' if runs['seed'].nunique() > 1 else ''} {_seeds(runs)}"
    return f"{first['model']}{variant}, {seeds} (runs {', '.join(r[:8] for r in runs['run_id'])})"


def comparisons(
    uri: str, matched: list[tuple[pd.Series, pd.Series]]
) -> tuple[list[significance.Comparison], list[str]]:
    """One comparison per tabulated metric that both sides have per-sample records for; the metrics left out."""
    samples = Samples(uri)
    a = [samples.of(x) for x, _ in matched]
    b = [samples.of(y) for _, y in matched]
    done, missing = [], []
    for column in ABLATION_METRICS:
        if all(significance.has(x, column.metric) for x in a + b):
            done.append(significance.compare(a, b, column.metric))
        else:
            missing.append(column.header)
    return done, missing


def compare_runs(
    uri: str,
    experiment: str,
    spec_a: str,
    spec_b: str,
    fmt: str = "md",
    profile: str | None = None,
    dataset: str | None = None,
    limit: int | None = None,
) -> str:
    """``kbench compare``: A against B on every tabulated metric, as Markdown or CSV."""
    if fmt not in FORMATS:
        raise KbenchError(f"unknown compare format {fmt!r}; use one of {', '.join(FORMATS)}")
    runs = load_runs(uri, experiment)
    if runs.empty:
        raise KbenchError("no finished kbench runs to compare; run `kbench run` first")
    a, b = side(runs, spec_a, profile, dataset, limit), side(runs, spec_b, profile, dataset, limit)
    matched = pairs(a, b)
    done, missing = comparisons(uri, matched)
    if not done:
        raise KbenchError("the runs have no per-sample records (samples/<task>.jsonl) in common to compare")
    columns = {c.metric: c for c in ABLATION_METRICS}
    if fmt == "csv":
        rows = [
            {"metric": columns[c.metric].header, "A": c.a, "B": c.b, "difference": c.difference, "low": c.low}
            | {"high": c.high, "p": c.p, "significant": c.significant}
            for c in done
        ]
        return pd.DataFrame(rows).to_csv(index=False, float_format="%.6g")
    shown = []
    for c in done:
        digits = columns[c.metric].decimals
        shown.append(
            {
                "metric": columns[c.metric].header,
                "A": f"{c.a:.{digits}f}",
                "B": f"{c.b:.{digits}f}",
                "A - B": _signed(c.difference, digits),
                "95% interval": f"[{_signed(c.low, digits)}, {_signed(c.high, digits)}]",
                "p": f"{c.p:.3f}",
                "significant": "yes" if c.significant else "no",
            }
        )
    body = tabulate(pd.DataFrame(shown), headers="keys", tablefmt="github", showindex=False, disable_numparse=True)
    note = f"; no per-sample records for {', '.join(missing)}" if missing else ""
    caption = (
        f"A: {_describe(a)}. B: {_describe(b)}. {len(matched)} pair(s) over the same test items; paired bootstrap "
        f"95% interval and randomization test ({significance.RESAMPLES:,} resamples), significant: p < "
        f"{significance.ALPHA}{note}."
    )
    return f"{caption}\n\n{body}\n"


def _signed(value: float, digits: int) -> str:
    """``value`` with its sign, a difference that rounds to zero as ``+0.00`` (not ``-0.00``)."""
    text = f"{value:+.{digits}f}"
    return f"{0.0:+.{digits}f}" if float(text) == 0 else text
