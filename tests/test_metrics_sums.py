"""SumR, SumCLS and SumCAP recomputed from the components of every row of the paper's Tables 2-4."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbench.metrics import sum_cap, sum_cls, sum_r

TABLES = json.loads(
    (Path(__file__).resolve().parents[1] / "results" / "paper" / "kaleido-bert-tables.json").read_text()
)
ROWS = [
    (f"{table}/{name}", row)
    for table in ("table2_retrieval", "table3_classification_captioning", "table4_ablations")
    for name, row in TABLES[table].items()
]


def itr_tir(row: dict) -> tuple[dict, dict]:
    return tuple({f"R@{k}": row[f"{side}_R@{k}"] for k in (1, 5, 10)} for side in ("ITR", "TIR"))


def cr_sub(row: dict) -> tuple[dict, dict]:
    return tuple({"acc": row[f"{task}_ACC"], "macro_f": row[f"{task}_macroF"]} for task in ("CR", "SUB"))


def cases(column: str) -> list:
    return [pytest.param(row, id=name) for name, row in ROWS if row.get(column) is not None]


@pytest.mark.parametrize("row", cases("SumR"))
def test_sum_r_matches_printed(row: dict) -> None:
    assert sum_r(*itr_tir(row)) == pytest.approx(row["SumR"], abs=0.005)  # printed to 2 decimals


@pytest.mark.parametrize("row", cases("SumCLS"))
def test_sum_cls_matches_printed(row: dict) -> None:
    assert sum_cls(*cr_sub(row)) == pytest.approx(row["SumCLS"], abs=0.005)


@pytest.mark.parametrize("row", cases("SumCAP"))
def test_sum_cap_matches_printed(row: dict) -> None:
    fc = {k: row[k] for k in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")}
    assert sum_cap(fc) == pytest.approx(row["SumCAP"], abs=0.05)  # printed to 1 decimal


def test_every_table_is_covered() -> None:
    assert len(cases("SumR")) == 10 + 12 and len(cases("SumCLS")) == 4 + 12 and len(cases("SumCAP")) == 3 + 12


def test_documented_exception_is_self_consistent() -> None:
    odd, full = TABLES["table4_ablations"]["AKPM:B+I~V"], TABLES["table4_ablations"]["AGM:AGM"]
    assert odd["TIR_R@10"] == 68.09 and full["TIR_R@10"] == 68.59
    assert sum_r(*itr_tir(odd)) == pytest.approx(319.02, abs=1e-9)
    assert sum_r(*itr_tir(full)) == pytest.approx(319.52, abs=1e-9)
    assert {k: v for k, v in odd.items() if k not in ("TIR_R@10", "SumR")} == {
        k: v for k, v in full.items() if k not in ("TIR_R@10", "SumR")
    }


def test_sum_cls_uses_label_space_macro_f() -> None:
    cr = {"acc": 90.0, "macro_f": 0.5, "macro_f_present": 0.9}
    sub = {"acc": 80.0, "macro_f": 0.25, "macro_f_present": 0.8}
    assert sum_cls(cr, sub) == pytest.approx(90 + 50 + 80 + 25)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sum_r({"R@1": 1, "R@5": 2}, {"R@1": 1, "R@5": 2, "R@10": 3}), "ITR scores lack 'R@10'"),
        (lambda: sum_cls({"acc": 1, "macro_f": 0.1}, {"acc": 1}), "SUB scores lack 'macro_f'"),
        (lambda: sum_cap({"BLEU-4": 1, "METEOR": 1, "ROUGE-L": 1}), "FC scores lack 'CIDEr'"),
    ],
)
def test_missing_components_raise(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
