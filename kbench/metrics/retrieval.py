"""Rank@K for retrieval: each positive's rank is counted from the scores, under an explicit tie policy."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

Ties = Literal["pessimistic", "optimistic", "average"]
TIES: tuple[str, ...] = ("pessimistic", "optimistic", "average")


def to_numpy(x: Any) -> np.ndarray:
    """``x`` (array-like, or a torch tensor on any device and of any dtype) as a numpy array."""
    if hasattr(x, "detach"):  # a torch tensor; duck-typed so that torch is not imported here
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()  # exact for every torch float type, and numpy has no bfloat16
    return np.asarray(x)


def _higher_and_tied(scores: Any, positive: Any, ties: str) -> tuple[np.ndarray, np.ndarray]:
    """Per query: how many candidates score strictly higher than the positive, and how many others tie it."""
    if ties not in TIES:
        raise ValueError(f"unknown ties policy {ties!r}; expected one of {', '.join(TIES)}")
    s = to_numpy(scores)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty (queries x candidates) matrix, got shape {s.shape}")
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == np.bool_):
        raise ValueError(f"scores must be numeric, got dtype {s.dtype}")
    if np.issubdtype(s.dtype, np.floating) and np.isnan(s).any():
        bad = np.flatnonzero(np.isnan(s).any(axis=1))
        raise ValueError(f"scores contain NaN in {bad.size} queries (first: row {bad[0]})")
    p = to_numpy(positive)
    if p.ndim != 1 or p.shape[0] != s.shape[0]:
        raise ValueError(f"positive must hold one column index per query ({s.shape[0]}), got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"positive must hold integer column indices, got dtype {p.dtype}")
    out = (p < 0) | (p >= s.shape[1])
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise ValueError(f"positive index {int(p[i])} of query {i} is out of range for {s.shape[1]} columns")
    pos = s[np.arange(s.shape[0]), p][:, None]
    higher = (s > pos).sum(axis=1)
    tied = (s == pos).sum(axis=1) - 1  # the positive ties itself
    return higher, tied


def ranks_and_ties(scores: Any, positive: Any, ties: Ties = "pessimistic") -> tuple[np.ndarray, np.ndarray]:
    """Per query, the 1-based rank of its positive under ``ties`` (``average``: the mean rank h+t/2+1) and how many
    other candidates tie it: the per-item outputs from which :func:`recall_at_k` gives Rank@K."""
    higher, tied = _higher_and_tied(scores, positive, ties)
    if ties == "pessimistic":
        return (higher + tied + 1).astype(np.float64), tied
    if ties == "optimistic":
        return (higher + 1).astype(np.float64), tied
    return higher + tied / 2 + 1, tied


def positive_ranks(scores: Any, positive: Any, ties: Ties = "pessimistic") -> np.ndarray:
    """1-based rank of each query's positive (per-item scores); ``average`` gives the mean rank h+t/2+1."""
    return ranks_and_ties(scores, positive, ties)[0]


def recall_at_k(ranks: Any, ks: Iterable[int] = (1, 5, 10), tied: Any = None) -> dict[str, float]:
    """Percent of queries whose positive ranks within K, as ``{"R@K": ...}``, from per-query ranks. With ``tied``
    (the ranks being mean ranks under ``average`` ties), a query counts the exact expectation over uniformly random
    orders of the candidates tied with its positive; without, it counts ``rank <= K``."""
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        if tied is None:
            hit = (ranks <= k).astype(np.float64)
        else:
            t = np.asarray(tied, dtype=np.float64)
            higher = ranks - t / 2 - 1
            hit = np.clip((k - higher) / (t + 1), 0.0, 1.0)
        out[f"R@{int(k)}"] = 100.0 * float(hit.mean())
    return out


def rank_at_k(
    scores: Any, positive: Any, ks: Iterable[int] = (1, 5, 10), ties: Ties = "pessimistic"
) -> dict[str, float]:
    """Percent of queries whose positive ranks within K, as ``{"R@K": ...}``, from the ranks of
    :func:`ranks_and_ties`; ``average`` is the exact expectation over uniformly random orders of the candidates
    tied with the positive."""
    ranks, tied = ranks_and_ties(scores, positive, ties)
    return recall_at_k(ranks, ks, tied if ties == "average" else None)
