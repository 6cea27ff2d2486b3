"""rank_at_k and positive_ranks against brute force over every ordering consistent with the scores."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import pytest
import torch

from kbench.metrics import positive_ranks, rank_at_k
from kbench.metrics.retrieval import ranks_and_ties, recall_at_k

POLICIES = ("pessimistic", "optimistic", "average")


def consistent_ranks(row: list[int], pos: int) -> list[int]:
    """The positive's rank in every full ordering of the candidates by non-increasing score."""
    ranks = []
    for order in itertools.permutations(range(len(row))):
        if all(row[a] >= row[b] for a, b in itertools.pairwise(order)):
            ranks.append(order.index(pos) + 1)
    return ranks


def brute_force(scores: np.ndarray, positive: np.ndarray, ks: list[int]) -> dict[str, dict[str, float]]:
    """R@K under each policy: worst and best consistent ordering, and the exact share of orderings."""
    per_query = [consistent_ranks(row.tolist(), int(p)) for row, p in zip(scores, positive, strict=True)]
    out: dict[str, dict[str, float]] = {}
    for policy, hit in (
        ("pessimistic", lambda r, k: Fraction(max(r) <= k)),
        ("optimistic", lambda r, k: Fraction(min(r) <= k)),
        ("average", lambda r, k: Fraction(sum(x <= k for x in r), len(r))),
    ):
        out[policy] = {f"R@{k}": float(100 * sum(hit(r, k) for r in per_query) / len(per_query)) for k in ks}
    return out


def heavily_tied_lists(seed: int, count: int) -> Iterator[tuple[np.ndarray, np.ndarray, list[int]]]:
    """``count`` random (scores, positive, ks) cases of up to 4 queries and 6 candidates with 3 score values."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n, q = int(rng.integers(1, 7)), int(rng.integers(1, 5))
        yield rng.integers(0, 3, size=(q, n)), rng.integers(0, n, size=q), list(range(1, n + 2))


def test_matches_enumeration_of_orderings_with_heavy_ties() -> None:
    for scores, positive, ks in heavily_tied_lists(0, 150):
        expected = brute_force(scores, positive, ks)
        for policy in POLICIES:
            assert rank_at_k(scores, positive, ks, ties=policy) == pytest.approx(expected[policy], abs=1e-9)


def test_positive_ranks_match_enumeration() -> None:
    rng = np.random.default_rng(1)
    for _ in range(60):
        n = int(rng.integers(1, 7))
        scores = rng.integers(0, 3, size=(3, n))
        positive = rng.integers(0, n, size=3)
        per_query = [consistent_ranks(row.tolist(), int(p)) for row, p in zip(scores, positive, strict=True)]
        worst, best = list(map(max, per_query)), list(map(min, per_query))
        np.testing.assert_array_equal(positive_ranks(scores, positive, "pessimistic"), worst)
        np.testing.assert_array_equal(positive_ranks(scores, positive, "optimistic"), best)
        mean_rank = [float(Fraction(sum(r), len(r))) for r in per_query]
        np.testing.assert_allclose(positive_ranks(scores, positive, "average"), mean_rank, rtol=0, atol=1e-12)


def test_per_query_ranks_reproduce_rank_at_k_under_every_policy() -> None:
    """The per-sample outputs (rank, tied) give back R@K exactly, and the ranks are the brute-force ones."""
    for scores, positive, ks in heavily_tied_lists(5, 80):
        per_query = [consistent_ranks(row.tolist(), int(p)) for row, p in zip(scores, positive, strict=True)]
        expected_ranks = {
            "pessimistic": [max(r) for r in per_query],
            "optimistic": [min(r) for r in per_query],
            "average": [float(Fraction(sum(r), len(r))) for r in per_query],
        }
        expected = brute_force(scores, positive, ks)
        for policy in POLICIES:
            ranks, tied = ranks_and_ties(scores, positive, policy)
            np.testing.assert_array_equal(ranks, expected_ranks[policy])
            np.testing.assert_array_equal(
                tied, [sum(x == row[p] for x in row) - 1 for row, p in zip(scores, positive, strict=True)]
            )
            recall = recall_at_k(ranks, ks, tied if policy == "average" else None)
            assert recall == rank_at_k(scores, positive, ks, policy)
            assert recall == pytest.approx(expected[policy], abs=1e-9)


def test_larger_matrices_against_explicit_tie_broken_sort() -> None:
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 10, size=(300, 101)).astype(np.float32)
    positive = rng.integers(0, 101, size=300)
    for policy, positive_last in (("pessimistic", True), ("optimistic", False)):
        ranks = []
        for row, p in zip(scores.tolist(), positive.tolist(), strict=True):
            order = sorted(range(101), key=lambda j, row=row, p=p: (-row[j], (j == p) == positive_last))
            ranks.append(order.index(p) + 1)
        ranks_arr = np.asarray(ranks)
        np.testing.assert_array_equal(positive_ranks(scores, positive, policy), ranks_arr)
        expected = {f"R@{k}": 100 * float(np.mean(ranks_arr <= k)) for k in (1, 5, 10, 50)}
        assert rank_at_k(scores, positive, (1, 5, 10, 50), policy) == pytest.approx(expected, abs=1e-9)
        assert 0 < expected["R@10"] < 100  # the data exercise the metric


@pytest.mark.parametrize("ties", POLICIES)
def test_rank_at_101_of_101_candidates_is_100(ties: str) -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=(40, 101))
    positive = rng.integers(0, 101, size=40)
    assert rank_at_k(scores, positive, ks=(101,), ties=ties) == {"R@101": 100.0}
    assert rank_at_k(np.zeros((7, 101)), np.arange(7), ks=(101,), ties=ties) == {"R@101": 100.0}


def test_hand_checked_cases() -> None:
    scores = np.array([[0.9, 0.5, 0.5, 0.1], [0.1, 0.2, 0.3, 0.4]])
    positive = np.array([1, 3])  # query 0: one higher, one tied; query 1: the top score
    ks = (1, 2, 3)
    assert rank_at_k(scores, positive, ks, "pessimistic") == {"R@1": 50.0, "R@2": 50.0, "R@3": 100.0}
    assert rank_at_k(scores, positive, ks, "optimistic") == {"R@1": 50.0, "R@2": 100.0, "R@3": 100.0}
    assert rank_at_k(scores, positive, ks, "average") == {"R@1": 50.0, "R@2": 75.0, "R@3": 100.0}
    np.testing.assert_array_equal(positive_ranks(scores, positive, "pessimistic"), [3, 1])
    np.testing.assert_array_equal(positive_ranks(scores, positive, "optimistic"), [2, 1])
    np.testing.assert_array_equal(positive_ranks(scores, positive, "average"), [2.5, 1])
    all_tied = np.ones((1, 101))
    assert rank_at_k(all_tied, [0], (1,), "pessimistic") == {"R@1": 0.0}
    assert rank_at_k(all_tied, [0], (1,), "optimistic") == {"R@1": 100.0}
    expected = {"R@1": 100 / 101, "R@10": 1000 / 101}
    assert rank_at_k(all_tied, [0], (1, 10), "average") == pytest.approx(expected)
    assert rank_at_k([[1.0, 2.0, 3.0]], [0]) == {"R@1": 0.0, "R@5": 100.0, "R@10": 100.0}  # the defaults


def test_torch_and_numpy_inputs_agree() -> None:
    gen = torch.Generator().manual_seed(4)
    scores = torch.randint(0, 6, (50, 20), generator=gen).float().requires_grad_()
    positive = torch.randint(0, 20, (50,), generator=gen)
    for policy in POLICIES:
        expected = rank_at_k(scores.detach().numpy(), positive.numpy(), (1, 5, 10), policy)
        assert rank_at_k(scores, positive, (1, 5, 10), policy) == expected
        bf16 = scores.to(torch.bfloat16)  # small integers are exact in bfloat16
        assert rank_at_k(bf16, positive, (1, 5, 10), policy) == expected
        np.testing.assert_array_equal(
            positive_ranks(scores, positive, policy),
            positive_ranks(scores.detach().numpy(), positive, policy),
        )
    assert 0 < expected["R@5"] < 100


@pytest.mark.parametrize(
    ("scores", "positive", "kwargs", "message"),
    [
        (np.zeros((3, 4)), [0, 1], {}, "one column index per query"),
        (np.zeros(4), [0], {}, "matrix"),
        (np.zeros((0, 4)), np.zeros(0, dtype=int), {}, "matrix"),
        (np.zeros((2, 4)), [0, 4], {}, "positive index 4 of query 1 is out of range for 4 columns"),
        (np.zeros((2, 4)), [-1, 0], {}, "positive index -1 of query 0 is out of range for 4 columns"),
        (np.zeros((2, 4)), [0.0, 1.0], {}, "integer"),
        (np.array([[0.1, np.nan], [0.2, 0.3]]), [0, 1], {}, "NaN"),
        (np.array([["a", "b"]]), [0], {}, "numeric"),
        (np.zeros((2, 4)), [0, 1], {"ties": "random"}, "unknown ties policy 'random'"),
        (np.zeros((2, 4)), [0, 1], {"ks": ()}, "ks"),
        (np.zeros((2, 4)), [0, 1], {"ks": (0, 1)}, "ks"),
    ],
)
def test_bad_inputs_raise(scores: np.ndarray, positive: list, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rank_at_k(scores, positive, **kwargs)
    if "ks" not in kwargs:
        with pytest.raises(ValueError, match=message):
            positive_ranks(scores, positive, kwargs.get("ties", "pessimistic"))
