"""Category (CR) and sub-category (SUB) recognition: accuracy and the paper's two readings of macro-F."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from kbench.metrics.retrieval import to_numpy


def classification_scores(
    y_true: Any, y_pred: Any, labels: Iterable[Any] | None = None, unseen: Any = None
) -> dict[str, float]:
    """``acc`` in percent, ``macro_f`` over ``labels`` (absent ones count as F1 = 0, as the paper's code did)
    and ``macro_f_present`` over the labels present in ``y_true``; both macro-F in [0, 1].

    ``unseen`` marks true labels outside ``labels`` (a test label that training never saw): every such example is
    an error, a false positive of the label predicted for it, and in ``macro_f_present`` a class of its own."""
    from sklearn.metrics import accuracy_score, f1_score  # here: kbench table reads metrics without sklearn's ~1 s

    t, p = to_numpy(y_true), to_numpy(y_pred)
    if t.ndim != 1 or p.ndim != 1 or t.shape != p.shape or t.size == 0:
        raise ValueError(f"y_true and y_pred must be non-empty, 1-D, equally long; got {t.shape}, {p.shape}")
    label_set = None if labels is None else np.asarray(list(labels))
    if label_set is not None:
        if label_set.size == 0:
            raise ValueError("labels is empty")
        for name, y in (("y_true", t[t != unseen] if unseen is not None else t), ("y_pred", p)):
            unknown = np.setdiff1d(y, label_set)
            if unknown.size:
                raise ValueError(f"{name} holds labels not in labels: {unknown[:10].tolist()}")
    return {
        "acc": 100.0 * float(accuracy_score(t, p)),
        "macro_f": float(f1_score(t, p, labels=label_set, average="macro", zero_division=0)),
        "macro_f_present": float(f1_score(t, p, labels=np.unique(t), average="macro", zero_division=0)),
    }
