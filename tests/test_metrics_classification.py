"""classification_scores against scikit-learn called directly and against a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from kbench.metrics import classification_scores


def test_matches_sklearn_on_random_labels() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 300))
        y_true = rng.integers(0, 40, size=n)  # labels 40..47 never occur
        y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, 48, size=n))
        got = classification_scores(y_true, y_pred, labels=range(48))
        assert got["acc"] == pytest.approx(100 * accuracy_score(y_true, y_pred))
        assert got["macro_f"] == pytest.approx(
            f1_score(y_true, y_pred, labels=list(range(48)), average="macro", zero_division=0)
        )
        assert got["macro_f_present"] == pytest.approx(
            f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0)
        )
        assert got["macro_f"] < got["macro_f_present"]  # at least the 8 never-seen labels count as zero
        default = classification_scores(y_true, y_pred)
        assert default["macro_f"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
        assert default["acc"] == got["acc"]


def test_hand_computed_absent_label_lowers_macro_f_only() -> None:
    # class 0: P 2/3, R 1 -> F 0.8; class 1: P 1, R 1/2 -> F 2/3; class 2 never occurs -> F 0
    got = classification_scores([0, 0, 1, 1], [0, 0, 1, 0], labels=[0, 1, 2])
    f0, f1 = 0.8, 2 / 3
    assert got == pytest.approx({"acc": 75.0, "macro_f": (f0 + f1) / 3, "macro_f_present": (f0 + f1) / 2})
    assert classification_scores([0, 0, 1, 1], [0, 0, 1, 0])["macro_f"] == pytest.approx((f0 + f1) / 2)


def test_a_test_label_unseen_in_training_is_an_error() -> None:
    """Hand-computed: the unseen example (-1) is wrong, a false positive of class 1 it was called, and a class of
    its own with F1 0 among the present ones."""
    got = classification_scores([0, 1, 1, -1], [0, 1, 1, 1], labels=[0, 1], unseen=-1)
    f0, f1 = 1.0, 0.8  # class 1: P 2/3, R 1
    assert got == pytest.approx({"acc": 75.0, "macro_f": (f0 + f1) / 2, "macro_f_present": (f0 + f1 + 0) / 3})
    with pytest.raises(ValueError, match=r"y_true holds labels not in labels: \[-1\]"):
        classification_scores([0, 1, 1, -1], [0, 1, 1, 1], labels=[0, 1])  # undeclared: a bug, not data


def test_torch_inputs_and_string_labels() -> None:
    expected = classification_scores([2, 1, 1, 0], [2, 1, 0, 0], labels=range(4))
    assert classification_scores(torch.tensor([2, 1, 1, 0]), torch.tensor([2, 1, 0, 0]), range(4)) == expected
    named = classification_scores(["TOPS", "SHOES", "SHOES"], ["TOPS", "SHOES", "TOPS"], ["SHOES", "TOPS"])
    assert named == pytest.approx({"acc": 200 / 3, "macro_f": 2 / 3, "macro_f_present": 2 / 3})


@pytest.mark.parametrize(
    ("y_true", "y_pred", "labels", "message"),
    [
        ([0, 1], [0], None, "equally long"),
        ([], [], None, "non-empty"),
        ([[0, 1]], [[0, 1]], None, "1-D"),
        ([0, 5], [0, 1], range(3), r"y_true holds labels not in labels: \[5\]"),
        ([0, 1], [0, 7], range(3), r"y_pred holds labels not in labels: \[7\]"),
        ([0, 1], [0, 1], [], "labels is empty"),
    ],
)
def test_bad_inputs_raise(y_true: list, y_pred: list, labels: range | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_scores(y_true, y_pred, labels)
