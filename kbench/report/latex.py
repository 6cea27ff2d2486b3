r"""LaTeX (booktabs) of kbench's tables: numbers right-aligned, a 95 % half-width after ``\pm`` in a column of its
own so that values and half-widths each align, changes as differences in the metric's units, text escaped."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "±": r"$\pm$",
    "–": "--",
    "×": r"$\times$",
    "Δ": r"$\Delta$",
}
PM = r"r@{${}\pm{}$}r"  # a value and its half-width: two right-aligned columns joined by ±
MISSING = "--"
SIGNIFICANT = r"\rlap{$^{*}$}"  # a star that takes no width, so the numbers stay aligned


class Compared(Protocol):
    """An ablation cell: ours (value, half-width), the paper's value, and whether our change is significant."""

    ours: tuple[float | None, float | None]
    paper: float | None

    @property
    def significant(self) -> bool: ...


def escape(text: str) -> str:
    """``text`` with LaTeX's special characters (and ±, –, ×, Δ) written as LaTeX."""
    return "".join(SPECIAL.get(c, c) for c in text)


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def number(value: float | None, decimals: int, sign: bool = False) -> str:
    return MISSING if _missing(value) else f"{value:{'+' if sign else ''}.{decimals}f}"


def interval(value: float | None, half: float | None, decimals: int) -> str:
    """The two cells of a ``PM`` column pair; without a half-width, the value alone and no ``\\pm``."""
    if _missing(value) or half is None:
        return rf"\multicolumn{{1}}{{r@{{}}}}{{{number(value, decimals)}}} &"
    return f"{value:.{decimals}f} & {half:.{decimals}f}"


def difference(value: float | None, base: float | None) -> float | None:
    """``value - base``, None where either is missing."""
    return None if _missing(value) or _missing(base) else round(value - base, 10)


def table(title: str, caption: str, spec: str, header: Sequence[str], body: Sequence[str]) -> str:
    """A captioned ``table*`` float around a booktabs tabular of ``header`` and ``body`` lines."""
    return "\n".join(
        [
            r"\begin{table*}[t]",
            r"\centering",
            rf"\caption{{{escape(title)}. {escape(caption)}}}",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            *header,
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table*}",
        ]
    )


def main_table(
    title: str,
    caption: str,
    identity: Mapping[str, str],
    columns: Sequence[tuple[str, int]],
    rows: Sequence[Mapping],
) -> str:
    """Tables 2 and 3: the ``identity`` columns (name -> alignment) then a value ± half-width pair per
    (header, decimals) column; a row's metric cells are (value, half-width or None)."""
    spec = " ".join([*identity.values(), *(PM for _ in columns)])
    header = [" & ".join([*map(escape, identity), *(rf"\multicolumn{{2}}{{c}}{{{escape(h)}}}" for h, _ in columns)])]
    body = [
        " & ".join([*(escape(str(row[k])) for k in identity), *(interval(*row[h], d) for h, d in columns)])
        for row in rows
    ]
    return table(title, caption, spec, [line + r" \\" for line in header], [line + r" \\" for line in body])


def ablation_table(
    title: str, caption: str, labels: Sequence[str], columns: Sequence[tuple[str, int]], cells: Mapping
) -> str:
    """Table 4's block: a row per (metric, decimals) column; per variant ours ± half-width and the paper's, and
    for all but the baseline (the first label) each one's difference from the baseline's (Δ), * significant."""
    base = labels[0]
    spec = " ".join(["l", PM, "r", *(f"{PM} rrr" for _ in labels[1:])])
    spans, rules, names, start = [""], [], ["metric"], 2
    for label in labels:
        width = 3 if label == base else 5
        spans.append(rf"\multicolumn{{{width}}}{{c}}{{{escape(label)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
        names += (
            [r"\multicolumn{2}{c}{kbench}", "paper"]
            if label == base
            else [
                r"\multicolumn{2}{c}{kbench}",
                r"$\Delta$",
                "paper",
                r"$\Delta$",
            ]
        )
        start += width
    body = []
    for metric, decimals in columns:
        row: Mapping[str, Compared] = cells[metric]
        first = row[base]
        line = [escape(metric), interval(*first.ours, decimals), number(first.paper, decimals)]
        for label in labels[1:]:
            cell = row[label]
            ours = number(difference(cell.ours[0], first.ours[0]), decimals, sign=True)
            ours += SIGNIFICANT if cell.significant else ""
            paper = number(difference(cell.paper, first.paper), decimals, sign=True)
            line += [interval(*cell.ours, decimals), ours, number(cell.paper, decimals), paper]
        body.append(" & ".join(line) + r" \\")
    header = [" & ".join(spans) + r" \\", "".join(rules), " & ".join(names) + r" \\"]
    return table(title, caption, spec, header, body)
