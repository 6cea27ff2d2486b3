"""Evaluation metrics of the five Fashion-Gen tasks and the paper's summary sums."""

from __future__ import annotations

from kbench.metrics.captioning import caption_scores
from kbench.metrics.classification import classification_scores
from kbench.metrics.retrieval import positive_ranks, rank_at_k
from kbench.metrics.sums import PAPER_SUMS, PAPER_TASKS, paper_sums, sum_cap, sum_cls, sum_r

__all__ = [
    "PAPER_SUMS",
    "PAPER_TASKS",
    "caption_scores",
    "classification_scores",
    "paper_sums",
    "positive_ranks",
    "rank_at_k",
    "sum_cap",
    "sum_cls",
    "sum_r",
]
