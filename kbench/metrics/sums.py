"""The paper's summary columns: SumR (Table 2), SumCLS and SumCAP (Table 3), from their components."""

from __future__ import annotations

from collections.abc import Mapping


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
