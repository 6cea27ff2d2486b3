"""The paper's summary columns: SumR (Table 2), SumCLS and SumCAP (Table 3), from their components.

``PAPER_SUMS`` declares, in one place, which tasks' logged metrics each sum reads: the paper's five tasks are the
tasks these sums are defined over, in the paper's order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


def _pick(scores: Mapping[str, float], keys: tuple[str, ...], what: str) -> list[float]:
    """The values of ``keys`` in ``scores``; a ValueError names the first key that is missing."""
    for k in keys:
        if k not in scores:
            raise ValueError(f"{what} scores lack {k!r} (have {sorted(scores)})")
    return [float(scores[k]) for k in keys]


def sum_r(itr: Mapping[str, float], tir: Mapping[str, float]) -> float:
    """SumR: R@1 + R@5 + R@10 of image-to-text plus the same of text-to-image retrieval, in percent."""
    keys = ("R@1", "R@5", "R@10")
    return sum(_pick(itr, keys, "ITR")) + sum(_pick(tir, keys, "TIR"))


def sum_cls(cr: Mapping[str, float], sub: Mapping[str, float]) -> float:
    """SumCLS: ACC + 100 x macro-F of category and sub-category recognition (label-space macro-F)."""
    cr_acc, cr_f = _pick(cr, ("acc", "macro_f"), "CR")
    sub_acc, sub_f = _pick(sub, ("acc", "macro_f"), "SUB")
    return cr_acc + 100.0 * cr_f + sub_acc + 100.0 * sub_f


def sum_cap(fc: Mapping[str, float]) -> float:
    """SumCAP: BLEU-4 + METEOR + ROUGE-L + CIDEr of fashion captioning, each x100."""
    return sum(_pick(fc, ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr"), "FC"))


@dataclass(frozen=True)
class PaperSum:
    """One of the paper's sums: the tasks it adds up, which of their logged metrics, under which component key."""

    name: str
    tasks: tuple[str, ...]
    components: Mapping[str, str]  # logged metric name -> the component key ``compute`` reads
    compute: Callable[..., float]  # one mapping of components per task, in ``tasks``' order

    def of(self, metrics: Mapping[str, float]) -> float | None:
        """The sum over logged ``task/metric`` values, or None when one of its components is missing."""
        parts = []
        for task in self.tasks:
            part = {key: metrics.get(f"{task}/{name}") for name, key in self.components.items()}
            if None in part.values():
                return None
            parts.append(part)
        return self.compute(*parts)


PAPER_SUMS = (
    PaperSum("SumR", ("itr", "tir"), {"R1": "R@1", "R5": "R@5", "R10": "R@10"}, sum_r),
    PaperSum("SumCLS", ("cr", "sub"), {"acc": "acc", "macro_f": "macro_f"}, sum_cls),
    PaperSum("SumCAP", ("fc",), {m: m for m in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")}, sum_cap),
)
PAPER_TASKS = tuple(task for paper_sum in PAPER_SUMS for task in paper_sum.tasks)  # itr, tir, cr, sub, fc


def paper_sums(metrics: Mapping[str, float]) -> dict[str, float]:
    """``sums/<name>`` of each paper sum whose tasks' metrics are all in ``metrics`` (logged ``task/metric``)."""
    values = {f"sums/{s.name}": s.of(metrics) for s in PAPER_SUMS}
    return {k: v for k, v in values.items() if v is not None}
