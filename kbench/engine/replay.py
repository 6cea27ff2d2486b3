"""Replaying spooled tracking calls into the store (``kbench sync``, ``--resume``, the end of an invocation whose
store came back): each record once, marked done as it goes, so that an interrupted replay resumes without
duplicates. A run whose creation was spooled (or lost its answer) is found by its ``kbench.run_key`` tag, a logged
model by its run and name; what is replayed twice (params, tags, metrics with their timestamps, artifacts) is stored
once."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, RunTag
from mlflow.tracking import MlflowClient

from kbench.engine.spool import (
    PARENT,
    PENDING,
    RUN_KEY,
    Spool,
    Spooled,
    append_line,
    is_pending,
    parent_spool,
    retrying,
    spool_root,
    unreachable,
)
from kbench.engine.tracking import (
    Tracking,
    ensure_experiment,
    finished_runs,
    log_inputs,
    log_metric_items,
    log_params,
    register_model,
    summarize,
)

PARENT_TAG = "mlflow.parentRunId"


def replay(spool: Spool, parents: Mapping[str, str] | None = None) -> str:
    """Replay the records of ``spool`` not yet done into the store it was recorded for; the run's id. ``parents``
    maps pending parent ids to the runs ``kbench sync`` created for them."""
    records = spool.records()
    client = MlflowClient(tracking_uri=records[0]["uri"])
    head = _resolved(client, records[0], parents or {})
    done = set(spool.done.read_text().split()) if spool.done.exists() else set()
    pending = [r for r in records[1:] if str(r["seq"]) not in done]
    run_id, before = _resolve_run(client, head)
    if pending and before != "RUNNING":  # a replay interrupted after the run's end: reopen it, end it again
        client.update_run(run_id, status="RUNNING")
    for record in pending:
        _REPLAY[record["op"]](client, run_id, head, record, spool.path.parent)
        append_line(spool.done, str(record["seq"]))
    if pending and before != "RUNNING" and not any(r["op"] == "terminate" for r in pending):
        client.set_terminated(run_id, before)
    return run_id


def _resolved(client: MlflowClient, head: Mapping[str, Any], parents: Mapping[str, str]) -> dict[str, Any]:
    """``head`` with its pending experiment opened (created if need be) and its pending parent replaced by the run
    created for it."""
    head = dict(head)
    if is_pending(head["experiment_id"]):
        name = head["experiment_id"].removeprefix(PENDING)
        head["experiment_id"] = ensure_experiment(client, head["uri"], name)
    if "tags" in head:
        parent = head["tags"].get(PARENT_TAG)
        head["tags"] = head["tags"] | ({PARENT_TAG: parents[parent]} if parent in parents else {})
    return head


def invocation_spools(folder: Path) -> Iterator[Spool]:
    """The spools of one invocation, its trials' first and its parent's last (whose summary reads theirs)."""
    paths = sorted(folder.glob("*.jsonl"), key=lambda p: (p.stem == PARENT, p.name))
    return (Spool(path) for path in paths)


def trial_count(folder: Path) -> int:
    return sum(1 for spool in invocation_spools(folder) if spool.path.stem != PARENT)


def replay_invocation(folder: Path) -> int:
    """Replay an invocation's spools and delete them; how many runs they held."""
    spools = list(invocation_spools(folder))
    parents = {}
    if is_pending(folder.name):  # its parent run is created (or found by its key) first: its trials link to it
        parent = spools[-1].records()[0]
        client = MlflowClient(tracking_uri=parent["uri"])
        parents[folder.name] = _resolve_run(client, _resolved(client, parent, {}))[0]
    for spool in spools:
        replay(spool, parents)
    shutil.rmtree(folder)
    return len(spools)


def sync(uri: str | None = None) -> tuple[int, str]:
    """Replay every spooled invocation, or those recorded for ``uri``, into its store; how many, and a line saying
    so. An unreachable store leaves its spools for the next sync (``Spooled``)."""
    root = spool_root()
    folders = [f for f in sorted(root.iterdir()) if f.is_dir() and any(f.glob("*.jsonl"))]
    runs = invocations = 0
    for folder in folders:
        recorded = next(invocation_spools(folder)).records()[0]["uri"]
        if uri is not None and recorded != uri:
            continue
        try:
            runs += replay_invocation(folder)
        except Exception as exc:
            if not unreachable(exc):
                raise
            raise Spooled(recorded, trial_count(folder), folder) from None
        invocations += 1
    if not invocations:
        return 0, f"kbench: nothing to sync in {root}"
    return invocations, f"kbench: replayed {runs} spooled run{'s' * (runs != 1)} of {invocations} invocation(s)"


def conclude(
    uri: str, experiment_id: str, parent_id: str, keys: dict[str, tuple[str, str, str]], tasks: str
) -> dict[str, str]:
    """An invocation's end once its trials ran: the calls they spooled replayed, their finished runs found and
    summarized on the parent run; if the store is unreachable (or the parent run pending), the summary is spooled
    with the parent's end and ``Spooled`` raised."""
    tracking = Tracking(uri, experiment_id, parent_id)
    folder = spool_root() / parent_id
    if not is_pending(parent_id):  # a pending parent waits for kbench sync to create it, then its trials
        try:
            if folder.is_dir():
                retrying(lambda: replay_invocation(folder))
            found = retrying(lambda: finished_runs(tracking, keys, tasks))
            retrying(lambda: summarize(tracking, parent_id, found.values()))
            return found
        except Exception as exc:
            if not unreachable(exc):
                raise
    parent = parent_spool(uri, experiment_id, parent_id)
    parent.append("summarize", keys=keys, tasks=tasks)
    raise Spooled(uri, trial_count(folder), folder)


def flush(uri: str, parent_id: str) -> None:
    """Replay on the spot what an invocation (the parent run ``parent_id``) spooled, once its trials are done;
    ``Spooled`` if the store is still unreachable or the parent run pending."""
    folder = spool_root() / parent_id
    if not folder.is_dir():
        return
    if not is_pending(parent_id):
        try:
            retrying(lambda: replay_invocation(folder))
            return
        except Exception as exc:
            if not unreachable(exc):
                raise
    raise Spooled(uri, trial_count(folder), folder)


def _resolve_run(client: MlflowClient, head: Mapping[str, Any]) -> tuple[str, str]:
    """The run a spool logs to, and its status: the one it names, else the one with its key (created now if none
    is: the store may have created it without its answer reaching the trial)."""
    if head.get("run_id"):
        return head["run_id"], client.get_run(head["run_id"]).info.status
    query = f"tags.`{RUN_KEY}` = '{head['tags'][RUN_KEY]}'"
    found = client.search_runs([head["experiment_id"]], query, max_results=1)
    if found:
        return found[0].info.run_id, found[0].info.status
    tags, name = head["tags"], head["name"]
    run = client.create_run(head["experiment_id"], start_time=head["start_time"], tags=tags, run_name=name)
    return run.info.run_id, "RUNNING"


def _replay_params(client: MlflowClient, run_id: str, head: Mapping, record: Mapping, folder: Path) -> None:
    log_params(client, run_id, record["params"])


def _replay_tags(client: MlflowClient, run_id: str, head: Mapping, record: Mapping, folder: Path) -> None:
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in record["tags"].items()])


def _replay_metrics(client: MlflowClient, run_id: str, head: Mapping, record: Mapping, folder: Path) -> None:
    log_metric_items(client, run_id, [Metric(k, v, ts, step) for k, v, ts, step in record["metrics"]])


def _replay_artifacts(client: MlflowClient, run_id: str, head: Mapping, record: Mapping, folder: Path) -> None:
    client.log_artifacts(run_id, str(folder / record["files"]), record.get("directory"))


def _replay_inputs(client: MlflowClient, run_id: str, head: Mapping, record: Mapping, folder: Path) -> None:
    dataset = Dataset(**record["dataset"])
    log_inputs(client, run_id, [DatasetInput(dataset, [InputTag(k, v) for k, v in record["context"].items()])])


def _replay_model(client: MlflowClient, run_id: str, head: Mapping, record: Mapping, folder: Path) -> None:
    """The run's logged model: found by run and name if an interrupted replay created it, else created."""
    query = f"source_run_id = '{run_id}' AND name = '{record['name']}'"
    found = client.search_logged_models([head["experiment_id"]], filter_string=query, max_results=1)
    local = folder / record["files"]
    existing = found[0].model_id if found else None
    register_model(client, head["experiment_id"], run_id, local, record["name"], record["params"], existing)


def _replay_terminate(client: MlflowClient, run_id: str, head: Mapping, record: Mapping, folder: Path) -> None:
    client.set_terminated(run_id, record["status"], end_time=record["end_time"])


def _replay_summarize(client: MlflowClient, run_id: str, head: Mapping, record: Mapping, folder: Path) -> None:
    tracking = Tracking(client.tracking_uri, head["experiment_id"], run_id)
    keys = {label: tuple(key) for label, key in record["keys"].items()}
    summarize(tracking, run_id, finished_runs(tracking, keys, record["tasks"]).values())


_REPLAY: dict[str, Callable[[MlflowClient, str, Mapping, Mapping, Path], None]] = {
    "params": _replay_params,
    "tags": _replay_tags,
    "metrics": _replay_metrics,
    "artifacts": _replay_artifacts,
    "inputs": _replay_inputs,
    "model": _replay_model,
    "terminate": _replay_terminate,
    "summarize": _replay_summarize,
}
