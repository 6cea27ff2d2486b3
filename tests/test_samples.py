"""Per-sample outputs: real smoke trials log samples/<task>.jsonl for every task into a real MLflow store, the
reader returns them, and every logged metric is recomputed from them; test labels unseen in training are errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import f1_score

from kbench.core.config import load_config
from kbench.core.errors import KbenchError
from kbench.data.layout import TEST_FILE
from kbench.engine.pipeline import run_trial
from kbench.engine.tracking import Tracking, TrialRun, open_experiment
from kbench.engine.trial import TrialSpec
from kbench.metrics.retrieval import recall_at_k
from kbench.tasks.samples import (
    CAPTION_SCORES,
    CAPTIONING_FIELDS,
    CLASSIFICATION_FIELDS,
    RETRIEVAL_FIELDS,
    artifact_path,
    from_jsonl,
    read_samples,
    to_jsonl,
)

TASKS = ["itr", "tir", "cr", "sub", "fc"]
MODELS = ("fashionbert", "clip")  # a single-stream model that captions and a dual encoder (full-gallery ranks)
NEW_SUBCATEGORY, NEW_CATEGORY = "LOAFERS", "SHOES"  # within the fixed-width fields


class Records(logging.Handler):
    """Keeps the warnings logged while the trials run (caplog is per test; the trials are per module)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def store(tiny_fashiongen: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Smoke trials of both models, every task, on the tiny dataset whose test split has a sub-category (two
    images) and a category (one image) that training never saw, logged to a fresh SQLite store."""
    root = tmp_path_factory.mktemp("samples")
    data = root / "fashiongen"
    shutil.copytree(tiny_fashiongen, data)
    with h5py.File(data / TEST_FILE, "r+") as f:
        f["input_subcategory"][0, 0] = NEW_SUBCATEGORY.encode()
        f["input_subcategory"][1, 0] = NEW_SUBCATEGORY.encode()
        f["input_category"][2, 0] = NEW_CATEGORY.encode()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking = Tracking(uri, open_experiment(uri, "samples"))
    cfg = load_config("smoke", ["data.dataset=fashiongen", f"data.data_dir={data}"])
    handler = Records()
    logging.getLogger("kbench").addHandler(handler)
    try:
        metrics = {model: run_trial(TrialSpec(model, 0), cfg, TASKS, tracking) for model in MODELS}
    finally:
        logging.getLogger("kbench").removeHandler(handler)
    client = MlflowClient(tracking_uri=uri)
    runs = {r.data.tags["kbench.model"]: r for r in client.search_runs([tracking.experiment_id])}
    return {"uri": uri, "tracking": tracking, "runs": runs, "metrics": metrics, "warnings": handler.messages}


def logged(store: dict, model: str, task: str) -> dict[str, float]:
    """The metrics the run logged for ``task``, without the task prefix."""
    metrics = store["runs"][model].data.metrics
    return {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(f"{task}/")}


def samples(store: dict, model: str, task: str) -> pd.DataFrame:
    return read_samples(store["uri"], store["runs"][model].info.run_id, task)


@pytest.mark.slow
def test_every_task_logs_its_samples_in_the_schema(store: dict) -> None:
    client = MlflowClient(tracking_uri=store["uri"])
    for model in MODELS:
        run_id = store["runs"][model].info.run_id
        names = sorted(info.path for info in client.list_artifacts(run_id, "samples"))
        ran = [t for t in TASKS if t != "fc" or model == "fashionbert"]  # a dual encoder cannot caption
        assert names == sorted(artifact_path(t) for t in ran)
    for task, fields in (("itr", RETRIEVAL_FIELDS), ("cr", CLASSIFICATION_FIELDS), ("fc", CAPTIONING_FIELDS)):
        frame = samples(store, "fashionbert", task)
        assert tuple(frame.columns) == fields and len(frame) > 0
    assert tuple(samples(store, "clip", "tir").columns) == (*RETRIEVAL_FIELDS, "full_rank")


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("task", ["itr", "tir"])
def test_retrieval_samples_reproduce_rank_at_k(store: dict, model: str, task: str) -> None:
    frame, metrics = samples(store, model, task), logged(store, model, task)
    assert len(frame) == 12  # every test product is a query (queries: 20 > 12 products)
    for prefix, column in (("", "rank"), ("pretrained_", "pretrained_rank"), ("full_", "full_rank")):
        if column not in frame:
            assert f"{prefix}R1" not in metrics
            continue
        ranks = frame[column].to_numpy()
        assert ranks.dtype == np.int64 and ranks.min() >= 1
        for k in (1, 5, 10):
            assert 100.0 * np.mean(ranks <= k) == metrics[f"{prefix}R{k}"]
        assert recall_at_k(ranks, (1, 5, 10)) == {f"R@{k}": metrics[f"{prefix}R{k}"] for k in (1, 5, 10)}
    assert frame["score"].notna().all()


@pytest.mark.slow
def test_query_rows_and_list_ids_follow_the_candidate_lists(store: dict) -> None:
    """Both models ranked the identical lists, so their list ids agree; lists differ from query to query."""
    for task in ("itr", "tir"):
        frames = [samples(store, model, task) for model in MODELS]
        assert frames[0]["query_row"].tolist() == frames[1]["query_row"].tolist()
        assert frames[0]["list_id"].tolist() == frames[1]["list_id"].tolist()
        assert frames[0]["list_id"].is_unique
    assert set(samples(store, "fashionbert", "itr")["list_id"]).isdisjoint(samples(store, "clip", "tir")["list_id"])


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("task", ["cr", "sub"])
def test_classification_samples_reproduce_acc_and_both_macro_f(store: dict, model: str, task: str) -> None:
    frame, metrics = samples(store, model, task), logged(store, model, task)
    t, p = frame["label_id"].to_numpy(), frame["prediction_id"].to_numpy()
    num_labels = int(frame["num_labels"].iloc[0])
    assert 100.0 * np.mean(t == p) == metrics["acc"]
    macro_f = f1_score(t, p, labels=range(num_labels), average="macro", zero_division=0)
    assert macro_f == metrics["macro_f"]
    assert f1_score(t, p, labels=np.unique(t), average="macro", zero_division=0) == metrics["macro_f_present"]
    assert p.min() >= 0 and p.max() < num_labels


@pytest.mark.slow
@pytest.mark.parametrize(("task", "new_label", "count"), [("sub", NEW_SUBCATEGORY, 2), ("cr", NEW_CATEGORY, 1)])
def test_labels_unseen_in_training_are_errors_and_named_once(
    store: dict, task: str, new_label: str, count: int
) -> None:
    for model in MODELS:
        frame = samples(store, model, task)
        unseen = frame[frame["label"] == new_label]
        assert len(unseen) == count and (unseen["label_id"] == -1).all()
        assert (unseen["prediction"] != new_label).all()  # never predicted: an error in acc
        assert (frame.loc[frame["label_id"] >= 0, "label"] != new_label).all()
    warnings = [m for m in store["warnings"] if f"{task}: " in m and "unseen in training" in m]
    assert len(warnings) == len(MODELS)  # one per trial
    assert all(new_label in m and f"{count} test examples" in m for m in warnings)


@pytest.mark.slow
def test_caption_samples_reproduce_rouge_and_cider(store: dict) -> None:
    frame, metrics = samples(store, "fashionbert", "fc"), logged(store, "fashionbert", "fc")
    scores = pd.DataFrame(frame["scores"].tolist())
    assert list(scores.columns) == list(CAPTION_SCORES) and len(frame) == 12  # one image of each test product
    for metric in ("ROUGE-L", "CIDEr"):
        assert scores[metric].mean() == pytest.approx(metrics[metric], rel=1e-12, abs=1e-12)
    assert (scores["ROUGE-L"] > 0).any()  # the comparison sees non-zero values
    assert all(len(refs) == 1 and refs[0] for refs in frame["references"])
    assert frame["row"].is_unique and frame["product_id"].is_unique


@pytest.mark.slow
def test_a_run_without_samples_is_one_line(store: dict) -> None:
    with TrialRun(store["tracking"], "before samples", {"model": "old"}) as run:
        run.log_text("config.yaml", "model: old\n")
    with pytest.raises(KbenchError, match=r"^run \w+ has no per-sample outputs for task 'itr'") as error:
        read_samples(store["uri"], run.run_id, "itr")
    assert "\n" not in str(error.value)
    with pytest.raises(KbenchError, match="cannot read run nosuchrun"):
        read_samples(store["uri"], "nosuchrun", "itr")


def test_jsonl_round_trip() -> None:
    records = [{"row": 1, "caption": "Black wool coat – unlined", "scores": {"CIDEr": 0.5}}, {"row": 2}]
    text = to_jsonl(records)
    assert text.count("\n") == 2 and from_jsonl(text) == records
