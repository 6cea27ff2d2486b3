"""Intervals and paired tests over test items, against direct computations on fixed data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import f1_score

from kbench.core.errors import KbenchError
from kbench.metrics.retrieval import recall_at_k
from kbench.metrics.significance import (
    Items,
    bootstrap,
    compare,
    half_width,
    items,
    macro_f,
    outcomes,
    value,
)


def retrieval(ranks: list[int], task: str = "itr") -> Items:
    return items(task, [{"query_row": i, "list_id": f"l{i}", "rank": r} for i, r in enumerate(ranks)])


def classification(labels: list[int], predictions: list[int], num_labels: int, task: str = "cr") -> Items:
    records = [
        {"row": i, "label_id": t, "prediction_id": p, "num_labels": num_labels}
        for i, (t, p) in enumerate(zip(labels, predictions, strict=True))
    ]
    return items(task, records)


def captioning(scores: np.ndarray, corpus: dict[str, float] | None = None) -> Items:
    names = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
    records = [{"row": i, "scores": dict(zip(names, map(float, row), strict=True))} for i, row in enumerate(scores)]
    return items("fc", records, corpus)


def test_macro_f_is_sklearns_over_the_training_label_space() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(-1, 7, size=(20, 50))  # -1: a test label never seen in training
    predictions = rng.integers(0, 7, size=(20, 50))
    predictions[0] = 0  # classes never predicted and never true in one row
    labels[0, :] = np.where(labels[0] > 3, 2, labels[0])
    expected = [
        f1_score(t, p, labels=range(7), average="macro", zero_division=0)
        for t, p in zip(labels, predictions, strict=True)
    ]
    assert macro_f(outcomes(labels, predictions, 7), 7) == pytest.approx(expected, abs=1e-12)


def test_values_reproduce_the_logged_metrics() -> None:
    run = {
        "itr": retrieval([1, 2, 6, 11, 1]),
        "tir": retrieval([3, 1, 1, 1, 20], "tir"),
        "cr": classification([0, 1, 2, -1], [0, 1, 1, 0], 3),
        "sub": classification([0, 0], [0, 1], 2, "sub"),
    }
    assert value(run, "itr/R1") == 40.0 and value(run, "itr/R10") == 80.0 and value(run, "tir/R5") == 80.0
    assert value(run, "sums/SumR") == pytest.approx(40 + 60 + 80 + 60 + 80 + 80)
    cr_f = f1_score([0, 1, 2, -1], [0, 1, 1, 0], labels=range(3), average="macro", zero_division=0)
    assert value(run, "cr/macro_f") == pytest.approx(cr_f)
    sub_f = f1_score([0, 0], [0, 1], labels=range(2), average="macro", zero_division=0)
    assert value(run, "sums/SumCLS") == pytest.approx(50 + 100 * cr_f + 50 + 100 * sub_f)


def test_recall_under_average_ties_is_the_metrics_expectation() -> None:
    ranks, tied = np.array([1.0, 2.5, 6.0, 11.5]), np.array([0, 3, 2, 1])
    run = {
        "itr": items(
            "itr",
            [
                {"query_row": i, "list_id": "l", "rank": r, "tied": t}
                for i, (r, t) in enumerate(zip(ranks, tied, strict=True))
            ],
        )
    }
    expected = recall_at_k(ranks, (1, 5, 10), tied)
    assert [value(run, f"itr/R{k}") for k in (1, 5, 10)] == pytest.approx([expected[f"R@{k}"] for k in (1, 5, 10)])
    assert value(run, "itr/R1") == pytest.approx(100 * (1 + 1 / 4) / 4)  # the first query, and one in four orders


def test_bleu_and_meteor_keep_their_corpus_value() -> None:
    scores = np.array([[10.0, 20.0, 30.0, 40.0], [20.0, 30.0, 50.0, 60.0]])
    fc = captioning(scores, {"BLEU-4": 12.0, "METEOR": 24.0, "ROUGE-L": 40.0, "CIDEr": 50.0})
    assert value({"fc": fc}, "fc/BLEU-4") == pytest.approx(12.0) and value({"fc": fc}, "fc/ROUGE-L") == 40.0
    assert value({"fc": fc}, "sums/SumCAP") == pytest.approx(12 + 24 + 40 + 50)
    resampled = bootstrap({"fc": fc}, "fc/BLEU-4", resamples=200)
    assert set(np.round(resampled, 9)) <= {7.0, 12.0, 17.0}  # the corpus value moved by the per-caption mean's change


def test_bootstrap_against_a_loop() -> None:
    rng = np.random.default_rng(0)
    run = {"cr": classification(list(rng.integers(0, 5, 40)), list(rng.integers(0, 5, 40)), 5)}
    labels, predictions = run["cr"].fields["outcome"] // 5 - 1, run["cr"].fields["outcome"] % 5
    resampled = bootstrap(run, "cr/macro_f", resamples=300, seed=7)
    expected = []
    stream = np.random.default_rng((7, 0, 0, 0))
    for _ in range(300):
        index = np.floor(stream.random(40) * 40).astype(int)
        expected.append(f1_score(labels[index], predictions[index], labels=range(5), average="macro", zero_division=0))
    assert resampled == pytest.approx(expected, abs=1e-12)
    low, high = np.percentile(expected, [2.5, 97.5])
    assert half_width(resampled) == pytest.approx((high - low) / 2)


def test_bootstrap_batches_do_not_change_the_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    run = {"itr": retrieval(list(np.random.default_rng(1).integers(1, 12, 30)))}
    whole = bootstrap(run, "itr/R5", resamples=50)
    monkeypatch.setattr("kbench.metrics.significance.CELLS", 30 * 7)  # seven replicates at a time
    assert np.array_equal(bootstrap(run, "itr/R5", resamples=50), whole)


def exact_p(a: np.ndarray, b: np.ndarray, statistic) -> float:
    """Two-sided p of the paired randomization test by enumerating all 2^n swaps."""
    observed = abs(statistic(a) - statistic(b))
    count = 0
    masks = list(itertools.product((False, True), repeat=len(a)))
    for mask in masks:
        m = np.array(mask)
        count += abs(statistic(np.where(m, b, a)) - statistic(np.where(m, a, b))) >= observed - 1e-12
    return count / len(masks)


def test_permutation_p_matches_exact_enumeration() -> None:
    ranks_a = np.array([1, 1, 2, 1, 7, 1, 3, 1, 1, 9])
    ranks_b = np.array([4, 1, 8, 2, 7, 6, 3, 12, 1, 9])
    exact = exact_p(ranks_a, ranks_b, lambda r: 100 * np.mean(r <= 1))
    result = compare([{"itr": retrieval(list(ranks_a))}], [{"itr": retrieval(list(ranks_b))}], "itr/R1", 20000)
    assert result.difference == pytest.approx(100 * (7 - 3) / 10)
    assert result.p == pytest.approx(exact, abs=0.01) and 0.05 < exact < 0.5  # sd of the estimate: 0.0035


def test_permutation_p_of_macro_f_matches_exact_enumeration() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2, 0, -1])
    pred_a = np.array([0, 1, 2, 0, 1, 2, 1, 1])
    pred_b = np.array([1, 1, 0, 2, 1, 0, 0, 1])

    def stat(predictions: np.ndarray) -> float:
        return f1_score(labels, predictions, labels=range(3), average="macro", zero_division=0)

    exact = exact_p(pred_a, pred_b, stat)
    a = {"cr": classification(list(labels), list(pred_a), 3)}
    b = {"cr": classification(list(labels), list(pred_b), 3)}
    result = compare([a], [b], "cr/macro_f", 20000)
    assert result.difference == pytest.approx(stat(pred_a) - stat(pred_b))
    assert result.p == pytest.approx(exact, abs=0.01) and 0.1 < exact < 0.5  # sd of the estimate: 0.003


def test_paired_interval_against_a_loop_over_seed_pairs() -> None:
    rng = np.random.default_rng(5)
    ranks = rng.integers(1, 15, size=(4, 25))  # A seed 0, A seed 1, B seed 0, B seed 1
    a = [{"itr": retrieval(list(r))} for r in ranks[:2]]
    b = [{"itr": retrieval(list(r))} for r in ranks[2:]]
    result = compare(a, b, "itr/R5", resamples=400, seed=2)
    differences = []
    streams = [np.random.default_rng((2, 0, j, 0)) for j in range(2)]
    for _ in range(400):
        per_pair = []
        for j in range(2):
            index = np.floor(streams[j].random(25) * 25).astype(int)
            per_pair.append(100 * np.mean(ranks[j][index] <= 5) - 100 * np.mean(ranks[2 + j][index] <= 5))
        differences.append(np.mean(per_pair))
    low, high = np.percentile(differences, [2.5, 97.5])
    assert (result.low, result.high) == pytest.approx((low, high))
    observed = np.mean([100 * np.mean(ranks[j] <= 5) - 100 * np.mean(ranks[2 + j] <= 5) for j in range(2)])
    assert result.difference == pytest.approx(observed) and result.pairs == 2
    swaps = [np.random.default_rng((2, 1, j, 0)).random((400, 25)) < 0.5 for j in range(2)]
    swapped = np.mean(
        [
            100 * np.mean(np.where(s, ranks[2 + j], ranks[j]) <= 5, axis=1)
            - 100 * np.mean(np.where(s, ranks[j], ranks[2 + j]) <= 5, axis=1)
            for j, s in enumerate(swaps)
        ],
        axis=0,
    )
    assert result.p == (1 + np.sum(np.abs(swapped) >= abs(observed) - 1e-9)) / 401


def test_identical_runs_differ_by_zero_with_p_one() -> None:
    rng = np.random.default_rng(9)
    run = {
        "itr": retrieval(list(rng.integers(1, 12, 40))),
        "tir": retrieval(list(rng.integers(1, 12, 40)), "tir"),
        "fc": captioning(rng.random((30, 4)) * 50, {"BLEU-4": 3.0, "METEOR": 9.0}),
    }
    for metric in ("sums/SumR", "fc/BLEU-4", "sums/SumCAP"):
        result = compare([run], [run], metric)
        assert (result.difference, result.low, result.high, result.p) == (0.0, 0.0, 0.0, 1.0)
        assert not result.significant


def test_items_are_paired_by_key_and_must_match() -> None:
    a = {"itr": retrieval([1, 5, 1])}
    shuffled = items("itr", [{"query_row": i, "list_id": f"l{i}", "rank": r} for i, r in [(2, 1), (0, 1), (1, 5)]])
    assert compare([a], [{"itr": shuffled}], "itr/R1").p == 1.0  # the same results in another order
    with pytest.raises(KbenchError, match="over different test items"):
        compare([a], [{"itr": retrieval([1, 5, 1, 1])}], "itr/R1")
    tied = items("itr", [{"query_row": i, "list_id": f"l{i}", "rank": 1.0, "tied": 0} for i in range(3)])
    with pytest.raises(KbenchError, match="scored differently"):
        compare([a], [{"itr": tied}], "itr/R1")
