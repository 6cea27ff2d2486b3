"""Intervals and paired tests over test items, from the per-sample records every trial logs.

Every tabulated metric is a statistic of its tasks' test items (a sum is one of several tasks' items), so it can be
recomputed for a resample of them: a percentile bootstrap gives one run's interval, and a paired bootstrap and a
paired approximate randomization (permutation) test compare two runs, or two sets of seed-paired runs, that
scored the same items. The replicates of stratum ``s`` (a seed pair and a task) draw, one after the other, from
``numpy.random.default_rng((seed, kind, *s))`` one uniform double per item (an index ``floor(u * n)``, or a swap
when ``u < 0.5``), so a result does not depend on how replicates are batched.

BLEU-4 and METEOR are corpus statistics, not means of their per-caption scores: their value is the logged corpus
score, and their resamples move it by the change of the per-caption mean (``Items.offsets``); the permutation test
uses the per-caption mean alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from kbench.core.errors import KbenchError
from kbench.metrics.captioning import CAPTION_SCORES

RESAMPLES = 1000
SEED = 0
ALPHA = 0.05  # a paired difference with p below it is significant
CELLS = 4_000_000  # replicate x item cells computed at once

KINDS = {"itr": "retrieval", "tir": "retrieval", "cr": "classification", "sub": "classification", "fc": "captioning"}
CORPUS_SCORES = ("BLEU-4", "METEOR")  # not the mean of their per-caption scores

Term = tuple[str, str, float]  # (task, the task's metric, weight)
TERMS: dict[str, tuple[Term, ...]] = {
    **{f"{t}/R{k}": ((t, f"R{k}", 1.0),) for t in ("itr", "tir") for k in (1, 5, 10)},
    **{f"{t}/{m}": ((t, m, 1.0),) for t in ("cr", "sub") for m in ("acc", "macro_f")},
    **{f"fc/{m}": (("fc", m, 1.0),) for m in CAPTION_SCORES},
    "sums/SumR": tuple((t, f"R{k}", 1.0) for t in ("itr", "tir") for k in (1, 5, 10)),
    "sums/SumCLS": tuple((t, m, w) for t in ("cr", "sub") for m, w in (("acc", 1.0), ("macro_f", 100.0))),
    "sums/SumCAP": tuple(("fc", m, 1.0) for m in CAPTION_SCORES),
}


@dataclass(frozen=True)
class Items:
    """One run's records of one task as arrays, one entry per test item, and the keys that pair them across runs."""

    task: str
    keys: np.ndarray  # item identity: "query_row/list_id" (retrieval) or the test row
    fields: dict[str, np.ndarray]
    num_labels: int = 0  # classification: size of the training label space
    offsets: dict[str, float] = field(default_factory=dict)  # corpus value minus per-item mean (BLEU-4, METEOR)

    def __len__(self) -> int:
        return len(self.keys)

    def aligned_to(self, other: Items) -> Items:
        """These items in ``other``'s order; a KbenchError when the two runs did not score the same items."""
        if len(set(self.keys.tolist())) != len(self) or set(self.keys.tolist()) != set(other.keys.tolist()):
            raise KbenchError(f"the two runs' {self.task} results are over different test items; cannot pair them")
        if set(self.fields) != set(other.fields):
            raise KbenchError(
                f"the two runs' {self.task} results were scored differently (tie policy); cannot pair them"
            )
        order = {k: i for i, k in enumerate(self.keys.tolist())}
        index = np.array([order[k] for k in other.keys.tolist()], dtype=np.int64)
        return Items(
            self.task, other.keys, {k: v[index] for k, v in self.fields.items()}, self.num_labels, self.offsets
        )


def items(task: str, records: Sequence[Mapping], corpus: Mapping[str, float] | None = None) -> Items:
    """``task``'s per-sample records (the ``samples/<task>.jsonl`` schema) as ``Items``; ``corpus`` holds the run's
    logged values of the task's metrics (``BLEU-4``...), whose corpus scores the offsets pin."""
    kind = KINDS[task]
    if kind == "retrieval":
        keys = np.array([f"{r['query_row']}/{r['list_id']}" for r in records], dtype=object)
        fields = {"rank": np.array([r["rank"] for r in records], dtype=float)}
        if records and records[0].get("tied") is not None:  # ``average`` ties: ranks are mean ranks
            fields["tied"] = np.array([r["tied"] for r in records], dtype=float)
        return Items(task, keys, fields)
    keys = np.array([str(r["row"]) for r in records], dtype=object)
    if kind == "classification":
        num_labels = int(records[0]["num_labels"]) if records else 0
        labels = np.array([r["label_id"] for r in records], dtype=np.int64)
        predictions = np.array([r["prediction_id"] for r in records], dtype=np.int64)
        return Items(task, keys, {"outcome": outcomes(labels, predictions, num_labels)}, num_labels)
    fields = {m: np.array([r["scores"][m] for r in records], dtype=float) for m in CAPTION_SCORES}
    corpus = corpus or {}
    offsets = {m: float(corpus[m]) - float(fields[m].mean()) for m in CORPUS_SCORES if m in corpus and len(keys)}
    return Items(task, keys, fields, offsets=offsets)


def outcomes(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> np.ndarray:
    """Each item's cell of the confusion matrix, ``(label + 1) * num_labels + prediction``: row 0 holds the labels
    never seen in training (-1). One code per item makes a resample's confusion counts one ``bincount``."""
    return (labels + 1) * num_labels + predictions


def confusion(codes: np.ndarray, num_labels: int) -> np.ndarray:
    """(R, num_labels + 1, num_labels) confusion counts of each row of (R, n) ``outcomes``."""
    rows = codes.shape[0]
    cells = (num_labels + 1) * num_labels
    flat = np.bincount((codes + np.arange(rows)[:, None] * cells).ravel(), minlength=rows * cells)
    return flat.reshape(rows, num_labels + 1, num_labels)


def macro_f(codes: np.ndarray, num_labels: int) -> np.ndarray:
    """Macro-F1 over the label space ``0..num_labels-1`` of each row of (R, n) ``outcomes``, as sklearn's
    ``f1_score(labels=range(num_labels), average="macro", zero_division=0)``: a true label of -1 (unseen in
    training) only counts against the predicted class."""
    counts = confusion(codes, num_labels)
    hits = np.diagonal(counts[:, 1:, :], axis1=1, axis2=2)
    denominator = counts[:, 1:, :].sum(axis=2) + counts.sum(axis=1)
    scores = np.zeros(denominator.shape)
    np.divide(2.0 * hits, denominator, where=denominator > 0, out=scores)
    return scores.mean(axis=1)


def accuracy(codes: np.ndarray, num_labels: int) -> np.ndarray:
    """Percent of items of each row of (R, n) ``outcomes`` whose prediction is their label."""
    return 100.0 * (codes // num_labels - 1 == codes % num_labels).mean(axis=1)


def component(items: Items, name: str, fields: Mapping[str, np.ndarray]) -> np.ndarray:
    """The task metric ``name`` (``R5``, ``macro_f``, ``CIDEr``...) of each row of (R, n) item fields, without the
    corpus offset."""
    kind = KINDS[items.task]
    if kind == "retrieval":
        k = int(name.removeprefix("R"))
        if "tied" not in fields:
            return 100.0 * (fields["rank"] <= k).mean(axis=1)
        # as kbench.metrics.recall_at_k: the expected hit over random orders of the candidates tied with the positive
        higher = fields["rank"] - fields["tied"] / 2 - 1
        return 100.0 * np.clip((k - higher) / (fields["tied"] + 1), 0.0, 1.0).mean(axis=1)
    if kind == "classification":
        score = accuracy if name == "acc" else macro_f
        return score(fields["outcome"], items.num_labels)
    return fields[name].mean(axis=1)


def tasks_of(metric: str) -> list[str]:
    """The tasks whose items ``metric`` is a statistic of, in order."""
    return list(dict.fromkeys(t for t, _, _ in TERMS[metric]))


Run = Mapping[str, Items]  # one run's items, by task


def statistic(metric: str, runs: Mapping[str, tuple[Items, Mapping[str, np.ndarray]]], offsets: bool) -> np.ndarray:
    """``metric`` of each row of its tasks' (R, n) fields; ``offsets`` adds the corpus offsets."""
    total = 0.0
    for task, name, weight in TERMS[metric]:
        items, fields = runs[task]
        value = component(items, name, fields)
        if offsets:
            value = value + items.offsets.get(name, 0.0)
        total = total + weight * value
    return np.asarray(total, dtype=float)


def value(run: Run, metric: str, offsets: bool = True) -> float:
    """``metric`` of all of the run's items: the logged value (without ``offsets``, the permutation test's)."""
    whole = {t: (run[t], {k: v[None, :] for k, v in run[t].fields.items()}) for t in tasks_of(metric)}
    return float(statistic(metric, whole, offsets)[0])


def has(run: Run, metric: str) -> bool:
    """Whether ``run`` has the non-empty items of every task ``metric`` needs."""
    return all(t in run and len(run[t]) > 0 for t in tasks_of(metric))


def _batches(resamples: int, n: int) -> Iterator[range]:
    """Replicate numbers in batches of about ``CELLS`` replicate x item cells."""
    step = max(1, CELLS // max(n, 1))
    for start in range(0, resamples, step):
        yield range(start, min(start + step, resamples))


def generator(seed: int, kind: int, stratum: tuple[int, ...]) -> np.random.Generator:
    """The random stream of one stratum's replicates: ``kind`` 0 for bootstrap resamples, 1 for permutations."""
    return np.random.default_rng((seed, kind, *stratum))


def draws(rng: np.random.Generator, kind: int, replicates: int, n: int) -> np.ndarray:
    """The next ``replicates`` rows of (R, n) item indices (``kind`` 0) or swap flags (``kind`` 1) from ``rng``."""
    uniform = rng.random((replicates, n))
    return (uniform * n).astype(np.int64) if kind == 0 else uniform < 0.5


def bootstrap(run: Run, metric: str, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``metric`` over ``resamples`` bootstrap resamples of the run's items (each task's resampled on its own)."""
    tasks = tasks_of(metric)
    streams = [generator(seed, 0, (0, i)) for i in range(len(tasks))]
    out = []
    for batch in _batches(resamples, max(len(run[t]) for t in tasks)):
        resampled = {}
        for i, t in enumerate(tasks):
            index = draws(streams[i], 0, len(batch), len(run[t]))
            resampled[t] = (run[t], {k: v[index] for k, v in run[t].fields.items()})
        out.append(statistic(metric, resampled, offsets=True))
    return np.concatenate(out)


def half_width(resampled: np.ndarray) -> float:
    """Half the width of the central 95 % percentile interval: the "±" of a bootstrap cell."""
    low, high = np.percentile(resampled, [2.5, 97.5])
    return float(high - low) / 2.0


@dataclass(frozen=True)
class Comparison:
    """A against B on one metric: both values (means over seed pairs), their difference with its paired 95 %
    bootstrap interval, and the permutation test's two-sided p-value."""

    metric: str
    a: float
    b: float
    difference: float
    low: float
    high: float
    p: float
    pairs: int

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def compare(
    a: Sequence[Run],
    b: Sequence[Run],
    metric: str,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    interval: bool = True,
) -> Comparison:
    """``metric`` of the runs ``a`` against ``b``, the i-th of ``a`` paired with the i-th of ``b`` (same seed), each
    pair over the items both scored. Resamples draw items jointly for A and B; swaps exchange A's and B's result of
    an item within its pair; p = (1 + #{|d*| >= |d|}) / (1 + resamples). Without ``interval`` (a test alone), the
    interval's bounds are NaN."""
    if not a or len(a) != len(b):
        raise ValueError(f"need as many runs in A as in B, at least one (have {len(a)} and {len(b)})")
    tasks = tasks_of(metric)
    pairs = [{t: (x[t], y[t].aligned_to(x[t])) for t in tasks} for x, y in zip(a, b, strict=True)]
    values_a = [value(x, metric) for x in a]
    values_b = [value(y, metric) for y in b]
    difference = float(np.mean(values_a) - np.mean(values_b))

    def paired(kind: int) -> np.ndarray:
        """Mean over pairs of metric(A) - metric(B) per replicate: of resamples (0) or of swapped items (1)."""
        n = max(len(pair[t][0]) for pair in pairs for t in tasks)
        streams = {(j, i): generator(seed, kind, (j, i)) for j in range(len(pairs)) for i in range(len(tasks))}
        out = []
        for batch in _batches(resamples, n):
            total = np.zeros(len(batch))
            for j, pair in enumerate(pairs):
                side_a, side_b = {}, {}
                for i, t in enumerate(tasks):
                    x, y = pair[t]
                    drawn = draws(streams[j, i], kind, len(batch), len(x))
                    if kind == 0:
                        side_a[t] = (x, {k: v[drawn] for k, v in x.fields.items()})
                        side_b[t] = (y, {k: v[drawn] for k, v in y.fields.items()})
                    else:
                        side_a[t] = (x, {k: np.where(drawn, y.fields[k], v) for k, v in x.fields.items()})
                        side_b[t] = (y, {k: np.where(drawn, x.fields[k], v) for k, v in y.fields.items()})
                total += statistic(metric, side_a, kind == 0) - statistic(metric, side_b, kind == 0)
            out.append(total / len(pairs))
        return np.concatenate(out)

    low, high = np.percentile(paired(0), [2.5, 97.5]) if interval else (np.nan, np.nan)
    observed = np.mean(
        [
            value({t: x for t, (x, _) in pair.items()}, metric, False)
            - value({t: y for t, (_, y) in pair.items()}, metric, False)
            for pair in pairs
        ]
    )
    swapped = paired(1)
    extreme = np.abs(swapped) >= abs(observed) - 1e-9 * max(1.0, abs(observed))
    p = (1 + int(extreme.sum())) / (1 + resamples)
    return Comparison(
        metric, float(np.mean(values_a)), float(np.mean(values_b)), difference, float(low), float(high), p, len(pairs)
    )
