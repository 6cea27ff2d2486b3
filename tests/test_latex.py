"""LaTeX tables: numbers aligned in ``r`` columns with the half-width after ``\\pm``, changes as differences, text
escaped."""

from __future__ import annotations

from dataclasses import dataclass

from kbench.report.latex import ablation_table, escape, main_table


@dataclass
class Cell:
    ours: tuple[float | None, float | None]
    paper: float | None
    significant: bool = False


def test_text_is_escaped() -> None:
    assert escape("B+I~II 5% a_b & <key> ± –") == (
        r"B+I\textasciitilde{}II 5\% a\_b \& \textless{}key\textgreater{} $\pm$ --"
    )


def test_main_table_aligns_values_and_half_widths_in_their_own_columns() -> None:
    rows = [
        {"model": "Kaleido_BERT", "seeds": "3", "R@1": (62.5, 15.0)},
        {"model": "paper", "seeds": "", "R@1": (27.99, None)},
        {"model": "none", "seeds": "1", "R@1": (float("nan"), None)},
    ]
    text = main_table("T", "mean ± 95% interval", {"model": "l", "seeds": "r"}, [("R@1", 2)], rows)
    assert r"\begin{tabular}{l r r@{${}\pm{}$}r}" in text
    assert r"\caption{T. mean $\pm$ 95\% interval}" in text
    body = text.split("\\midrule\n")[1].split("\n\\bottomrule")[0].splitlines()
    assert body == [
        r"Kaleido\_BERT & 3 & 62.50 & 15.00 \\",
        r"paper &  & \multicolumn{1}{r@{}}{27.99} & \\",  # no half-width: no \pm
        r"none & 1 & \multicolumn{1}{r@{}}{--} & \\",
    ]


def test_ablation_changes_are_differences_not_percentages() -> None:
    cells = {"CR macro-F": {"Random": Cell((0.003, 0.001), 0.711), "AGM": Cell((0.010, None), 0.714, True)}}
    text = ablation_table("T", "c", ["Random", "AGM"], [("CR macro-F", 3)], cells)
    assert r"\cmidrule(lr){2-4}\cmidrule(lr){5-9}" in text
    row = text.split("\\midrule\n")[1].splitlines()[0]
    assert row == (  # +0.007 where a percentage would say +233.3%
        r"CR macro-F & 0.003 & 0.001 & 0.711 & \multicolumn{1}{r@{}}{0.010} & "
        r"& +0.007\rlap{$^{*}$} & 0.714 & +0.003 \\"
    )
    assert "%" not in row
