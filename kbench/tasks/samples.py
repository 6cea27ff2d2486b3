"""Per-sample outputs of a trial: one MLflow artifact ``samples/<task>.jsonl`` per task, one JSON object per test
item in the order of the task's items, from which every logged metric of the task can be recomputed exactly.

The schema (documented in docs/samples.md) is owned here: the writers (the tasks) build records with the functions
below, the readers (tables, significance tests) read them back with :func:`read_samples`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from kbench.core.config import digest
from kbench.core.errors import KbenchError
from kbench.core.tracking_store import read_artifact
from kbench.metrics.captioning import CAPTION_SCORES

ARTIFACT_DIR = "samples"

# The fields of one line, per task kind. Retrieval lines of dual encoders also have FULL_RANK_FIELD; under the
# ``average`` tie policy ranks are mean ranks and lines also have ``tied`` (and ``pretrained_tied``).
RETRIEVAL_FIELDS = ("query_row", "list_id", "rank", "pretrained_rank", "score")
FULL_RANK_FIELD = "full_rank"
CLASSIFICATION_FIELDS = ("row", "product_id", "label", "prediction", "label_id", "prediction_id", "num_labels")
CAPTIONING_FIELDS = ("row", "product_id", "caption", "references", "scores")
FIELDS = {
    "itr": RETRIEVAL_FIELDS,
    "tir": RETRIEVAL_FIELDS,
    "cr": CLASSIFICATION_FIELDS,
    "sub": CLASSIFICATION_FIELDS,
    "fc": CAPTIONING_FIELDS,
}

UNSEEN = -1  # label_id of a test label that never occurs in training


def artifact_path(task: str) -> str:
    """The run-relative path of ``task``'s samples artifact."""
    return f"{ARTIFACT_DIR}/{task}.jsonl"


def list_id(candidates: Sequence[int], positive: int, protocol: str, version: int | str) -> str:
    """A content hash of one query's candidate list: the candidate rows in order, the positive's slot and the
    protocol; equal across runs that ranked the identical list."""
    return digest([int(c) for c in candidates], int(positive), protocol, str(version))


def retrieval_record(
    query_row: int, list_id: str, rank: float, pretrained_rank: float | None, score: float, **extra: int | float
) -> dict[str, Any]:
    """One retrieval query: the 1-based rank of its positive (fine-tuned and pre-trained head) and its score;
    ``extra`` are the optional fields (``full_rank``; ``tied`` and ``pretrained_tied`` under ``average`` ties)."""
    return {
        "query_row": int(query_row),
        "list_id": list_id,
        "rank": rank,
        "pretrained_rank": pretrained_rank,
        "score": float(score),
        **extra,
    }


def classification_record(
    row: int, product_id: int, label: str, prediction: str, label_id: int, prediction_id: int, num_labels: int
) -> dict[str, Any]:
    """One classified test image; ids are in the training label space, ``label_id`` is UNSEEN for a new label."""
    return {
        "row": int(row),
        "product_id": int(product_id),
        "label": str(label),
        "prediction": str(prediction),
        "label_id": int(label_id),
        "prediction_id": int(prediction_id),
        "num_labels": int(num_labels),
    }


def captioning_record(
    row: int, product_id: int, caption: str, references: Iterable[str], scores: Mapping[str, float]
) -> dict[str, Any]:
    """One captioned test image: the generated caption, its references and its per-caption scores (x100)."""
    return {
        "row": int(row),
        "product_id": int(product_id),
        "caption": caption,
        "references": [str(r) for r in references],
        "scores": {name: float(scores[name]) for name in CAPTION_SCORES},
    }


def to_jsonl(records: Iterable[Mapping[str, Any]]) -> str:
    """Records as JSON Lines (one object a line, keys in the schema's order)."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def from_jsonl(text: str) -> list[dict[str, Any]]:
    """The records of a JSON Lines text."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_samples(uri: str, run_id: str, task: str, artifact_uri: str | None = None) -> pd.DataFrame:
    """The samples ``task`` logged in run ``run_id`` of tracking store ``uri``, one row per test item, in order
    (read in place when the run's local ``artifact_uri`` is given). A run without them (one from before samples
    existed, or that did not run ``task``) is a KbenchError."""
    path = artifact_path(task)
    text = read_artifact(uri, run_id, path, artifact_uri)
    if text is None:
        raise KbenchError(f"run {run_id} has no per-sample outputs for task {task!r} (no artifact {path})")
    records = from_jsonl(text)
    return pd.DataFrame.from_records(records, columns=_columns(task, records))


def _columns(task: str, records: list[dict[str, Any]]) -> list[str] | None:
    """The schema's column order for ``task`` (plus any extra field the records carry, e.g. ``full_rank``)."""
    if task not in FIELDS:
        return None
    extra = [k for k in (records[0] if records else {}) if k not in FIELDS[task]]
    return [*FIELDS[task], *extra]
