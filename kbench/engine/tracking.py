"""MLflow conventions: where runs go, one parent run per invocation, one child run per trial."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModelOutput,
    LoggedModelStatus,
    Metric,
    Param,
    RunStatus,
    RunTag,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

import kbench
from kbench.core import progress
from kbench.core.errors import KbenchError
from kbench.core.interrupts import Interrupted
from kbench.core.paths import cache_dir
from kbench.core.tracking_store import DEFAULT_EXPERIMENT, sqlite_path
from kbench.engine.spool import (
    PARENT,
    PENDING,
    RUN_KEY,
    Spool,
    Spooled,
    end_parent,
    is_pending,
    parent_call,
    record_call,
    retrying,
    unreachable,
)
from kbench.engine.sqlite_store import store_lock, wait_when_busy

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

# MLflow 3's UI reads this experiment tag to open a model-training experiment on its runs, not on GenAI traces.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# Its workflow switch (default GenAI) decides the experiment page's tabs; this query picks the runs table.
UI_QUERY = "workflowType=machine_learning"
DATASET_CONTEXT = "pretrain+tasks"  # the run's one dataset input serves pre-training and every task
LOGGED_MODEL_MAX_BYTES = 64 * 2**20  # larger checkpoints are registered by their runs:/ URI, not copied again
_BATCH = 100  # MLflow's limit of params (and tags) per log_batch call
HEARTBEAT = "kbench.heartbeat"  # a parent run's tag: when (epoch seconds) its invocation last said it is alive
OWNER = "kbench.owner"  # a parent run's tag: the host and pid of its invocation
HEARTBEAT_S = 30.0  # how often an open parent run's heartbeat is refreshed
STALE_S = 4 * HEARTBEAT_S  # a RUNNING parent run whose heartbeat is older than this is taken for dead


@dataclass(frozen=True)
class Tracking:
    """Where a run logs: the tracking URI, the experiment and the parent run of this invocation."""

    uri: str
    experiment_id: str
    parent_run_id: str | None = None

    def client(self) -> MlflowClient:
        wait_when_busy()
        return MlflowClient(tracking_uri=self.uri)


def open_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name``, created on first use (artifacts beside a SQLite store). A new SQLite store is
    created and migrated under a lock, so that invocations starting together do not both migrate it. A store that
    cannot be reached (after retries) gives a pending id: the invocation's runs go to the spool, and ``kbench sync``
    opens the experiment."""
    try:
        with store_lock(uri), retries_logged(None):
            return retrying(lambda: ensure_experiment(MlflowClient(tracking_uri=uri), uri, name))
    except MlflowException as exc:
        if unreachable(exc):
            log.debug("tracking store %s unreachable: %s", uri, exc.message.splitlines()[0])
            return f"{PENDING}{name}"
        raise KbenchError(f"cannot use tracking store {uri}: {exc.message.splitlines()[0]}") from None


def ensure_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """``open_experiment`` once the store is open (errors are MLflow's)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if EXPERIMENT_KIND[0] not in found.tags:  # made by an earlier kbench
            client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
        return found.experiment_id
    location = None
    database = sqlite_path(uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
        location = (database.parent / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))


def git_sha() -> str:
    """The commit of the kbench checkout, or ``unknown`` outside a git checkout."""
    here = Path(kbench.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def base_tags(extra: Mapping[str, Any]) -> dict[str, str]:
    tags = {"kbench.version": kbench.__version__, "kbench.git_sha": git_sha()}
    tags.update({f"kbench.{k}": str(v) for k, v in extra.items()})
    return tags


@contextmanager
def parent_run(tracking: Tracking, name: str, tags: Mapping[str, Any], params: Mapping[str, Any]) -> Iterator[str]:
    """One run per CLI invocation; trials log their runs under it. Marked FAILED if the block raises; KILLED, with
    its child runs still RUNNING, if it is interrupted (the ``Interrupted`` then counts the trials stopped). Its
    heartbeat tells ``settle`` it is alive. A store out of reach from the start gives a pending run, kept in the spool
    with everything logged under it until ``kbench sync`` creates it."""
    with retries_logged(cache_dir("tune") / str(tags.get("invocation", name)) / "output.log"):
        run_id = _create_parent(tracking, name, tags, params)
        heartbeat = Heartbeat(tracking.uri, run_id)
        status = RunStatus.to_string(RunStatus.FAILED)
        try:
            yield run_id
            status = RunStatus.to_string(RunStatus.FINISHED)
        except Spooled:  # the results are whole, only not in the store yet
            status = RunStatus.to_string(RunStatus.FINISHED)
            raise
        except KeyboardInterrupt as exc:
            status = RunStatus.to_string(RunStatus.KILLED)
            stopped = _kill_children(tracking, run_id)
            if isinstance(exc, Interrupted) and stopped is not None:
                exc.stopped = stopped
            raise
        finally:  # spooled if the store is unreachable: the error that ended the block stays the one shown
            heartbeat.stop()
            end_parent(tracking.uri, tracking.experiment_id, run_id, status)


def _create_parent(tracking: Tracking, name: str, tags: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """The parent run's id, created with its tags and params; if the store is unreachable, a pending id whose spool
    holds them (the run's key finds it again if the store created it without its answer arriving)."""
    client = tracking.client()
    values = base_tags(tags) | {RUN_KEY: uuid.uuid4().hex} | heartbeat_tags()
    start = _now_ms()
    run_id = None
    if not is_pending(tracking.experiment_id):
        try:
            create = partial(client.create_run, tracking.experiment_id, start, values, name)
            run_id = retrying(create).info.run_id
        except Exception as exc:
            if not unreachable(exc):
                raise
    if run_id is None:
        run_id = f"{PENDING}{values[RUN_KEY]}"
        head = {"uri": tracking.uri, "experiment_id": tracking.experiment_id, "run_id": None, "name": name}
        spool = Spool.start(run_id, PARENT, head | {"tags": values, "start_time": start})
        log.debug("tracking store %s unreachable: the invocation's run goes on in %s", tracking.uri, spool.path)
    strings = param_values(params)
    call = partial(log_params, client, run_id, strings)
    parent_call(tracking.uri, tracking.experiment_id, run_id, call, "params", params=strings)
    return run_id


def log_parent_metrics(tracking: Tracking, metrics: Mapping[str, float]) -> None:
    """Log ``metrics`` on the invocation's parent run, or in its spool if the store is unreachable."""
    items = metric_items(metrics)
    rows = [[m.key, m.value, m.timestamp, m.step] for m in items]
    call = partial(log_metric_items, tracking.client(), tracking.parent_run_id, items)
    parent_call(tracking.uri, tracking.experiment_id, tracking.parent_run_id, call, "metrics", metrics=rows)


def _kill_children(tracking: Tracking, parent_id: str) -> int | None:
    """Mark KILLED the child runs of ``parent_id`` still RUNNING; how many of its children ended KILLED (None when
    the store cannot tell: the spooled ones end KILLED by themselves)."""
    if is_pending(parent_id):
        return None
    client = tracking.client()
    try:
        query = f"tags.`mlflow.parentRunId` = '{parent_id}'"
        children = client.search_runs([tracking.experiment_id], query, max_results=1000)
        for run in children:
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
    except Exception as exc:
        if not unreachable(exc):
            raise
        return None
    return sum(run.info.status in ("RUNNING", "KILLED") for run in children)


def heartbeat_tags() -> dict[str, str]:
    """A parent run's liveness tags: its heartbeat, now, and its owner (host and pid)."""
    return {HEARTBEAT: str(int(time.time())), OWNER: f"{socket.gethostname()} {os.getpid()}"}


class Heartbeat:
    """Refreshes a parent run's ``kbench.heartbeat`` tag every ``HEARTBEAT_S`` from a daemon thread while the run is
    open, so that ``settle`` leaves a live invocation's run alone; a failed refresh is skipped (the next one
    retries), a pending run has none."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.stopped = threading.Event()
        if not is_pending(run_id):
            beat = partial(self._beat, MlflowClient(tracking_uri=uri), run_id)
            threading.Thread(target=beat, name="kbench-heartbeat", daemon=True).start()

    def _beat(self, client: MlflowClient, run_id: str) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            try:
                client.set_tag(run_id, HEARTBEAT, str(int(time.time())))
            except Exception as exc:  # an outage, a busy store: the run's liveness only ages
                log.debug("heartbeat of run %s not refreshed: %s", run_id, exc)

    def stop(self) -> None:
        self.stopped.set()


def alive(run: Any, now: float) -> bool:
    """Whether the RUNNING parent ``run`` belongs to a live invocation: its heartbeat is fresh and, on this host, its
    process exists. Runs without a heartbeat (older versions) count as dead, as they always did."""
    tags = run.data.tags
    if HEARTBEAT not in tags:
        return False
    host, _, pid = tags.get(OWNER, "").partition(" ")
    if host == socket.gethostname() and pid.isdigit() and not _process_exists(int(pid)):
        return False
    return now - float(tags[HEARTBEAT]) < STALE_S


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


@contextmanager
def retries_logged(path: Path | None) -> Iterator[None]:
    """While the block runs (unless ``--verbose``), urllib3's ``Retrying (Retry(...))`` warnings about an unreachable
    store go to ``path`` (the invocation's log, opened on the first; nowhere if None), not to the terminal, where
    kbench's own line says what happened."""
    if progress.verbose():
        yield
        return
    pool = logging.getLogger("urllib3.connectionpool")
    handler: logging.Handler = logging.NullHandler()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = pool.handlers, pool.propagate
    pool.handlers, pool.propagate = [handler], False
    try:
        yield
    finally:
        pool.handlers, pool.propagate = saved
        handler.close()


class TrialRun:
    """The MLflow run of one trial (a child of the invocation's run); FINISHED only if the trial completes.

    Each call is retried while the store is unreachable; once that fails, this and every later call of the run go to
    a ``Spool`` in ``KBENCH_HOME`` instead, and the trial carries on (``kbench sync`` replays them)."""

    def __init__(self, tracking: Tracking, name: str, tags: Mapping[str, Any]) -> None:
        self.client = tracking.client()
        self.tracking = tracking
        self.name = name
        self.tags = base_tags(tags)
        if tracking.parent_run_id:
            self.tags["mlflow.parentRunId"] = tracking.parent_run_id
        self.tags[RUN_KEY] = uuid.uuid4().hex  # finds the run again if its creation's answer is lost
        self.experiment_id = tracking.experiment_id
        self.start_time = _now_ms()
        self.spool: Spool | None = None
        self.run_id: str | None = None
        if is_pending(tracking.parent_run_id):  # the parent is in the spool: so are its children, linked by sync
            self.spool = self._start_spool()
            return
        try:
            created = retrying(lambda: self.client.create_run(self.experiment_id, self.start_time, self.tags, name))
            self.run_id = created.info.run_id
        except Exception as exc:
            if not unreachable(exc):
                raise
            self.spool = self._start_spool()

    def _start_spool(self) -> Spool:
        """The run's spool, opened by where and how the run is (or is to be) created."""
        head = {"uri": self.tracking.uri, "experiment_id": self.experiment_id, "run_id": self.run_id}
        head |= {"name": self.name, "tags": self.tags, "start_time": self.start_time}
        spool = Spool.start(self.tracking.parent_run_id or "runs", self.name, head)
        log.warning("tracking store %s unreachable: run %s goes on in %s", self.tracking.uri, self.name, spool.path)
        return spool

    def _call(self, call: Callable[[], object], op: str, **record: Any) -> None:
        """``call`` on the store, or the spool's record ``op`` once the store is out of reach."""
        self.spool = record_call(self.spool, self._start_spool, call, op, **record)

    def __enter__(self) -> TrialRun:
        return self

    def __exit__(self, exc_type: type | None, *_: object) -> None:
        status = RunStatus.FINISHED if exc_type is None else RunStatus.FAILED
        if exc_type is not None and issubclass(exc_type, SystemExit | KeyboardInterrupt):  # Tune stopped the trial
            status = RunStatus.KILLED
        name, end = RunStatus.to_string(status), _now_ms()
        self._call(partial(self.client.set_terminated, self.run_id, name, end), "terminate", status=name, end_time=end)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        values = {f"kbench.{k}": str(v) for k, v in tags.items()}
        items = [RunTag(k, v) for k, v in values.items()]
        self._call(partial(self.client.log_batch, self.run_id, tags=items), "tags", tags=values)

    def log_params(self, params: Mapping[str, Any]) -> None:
        values = param_values(params)
        self._call(partial(log_params, self.client, self.run_id, values), "params", params=values)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        items = metric_items(metrics, step)
        rows = [[m.key, m.value, m.timestamp, m.step] for m in items]
        self._call(partial(log_metric_items, self.client, self.run_id, items), "metrics", metrics=rows)

    def log_artifacts(self, local_dir: str | Path, directory: str | None) -> None:
        """Copy the files of ``local_dir`` into the artifact sub-directory ``directory``."""
        call = partial(self.client.log_artifacts, self.run_id, str(local_dir), directory)
        self._call(call, "artifacts", files=local_dir, directory=directory)

    def log_text(self, name: str, content: str, directory: str | None = None) -> None:
        """Write ``content`` as artifact file ``name``, in the artifact sub-directory ``directory`` if given."""
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / name).write_text(content)
            self.log_artifacts(tmp, directory)

    def log_image(self, name: str, figure: Figure) -> None:
        """Save ``figure`` as the PNG artifact ``name`` (shown inline by the UI's artifact view)."""
        with tempfile.TemporaryDirectory() as tmp:
            figure.savefig(Path(tmp) / name, dpi=120, bbox_inches="tight")
            self.log_artifacts(tmp, None)

    def log_dataset(self, name: str, digest: str, data_dir: str | None, sizes: Mapping[str, int]) -> None:
        """The trial's dataset as the run's MLflow dataset input: its name, fingerprint, where it was read from (a
        directory, or the SynthFashion generator) and its split sizes."""
        if data_dir:
            source_type, source = "local", {"uri": str(Path(data_dir).resolve())}
        else:
            source_type, source = "code", {"tags": {"generator": "synthfashion"}}
        fields = {"name": name, "digest": digest, "source_type": source_type, "source": json.dumps(source)}
        fields["profile"] = json.dumps(dict(sizes))
        inputs = [DatasetInput(Dataset(**fields), [InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXT)])]
        context = {MLFLOW_DATASET_CONTEXT: DATASET_CONTEXT}
        self._call(partial(log_inputs, self.client, self.run_id, inputs), "inputs", dataset=fields, context=context)

    def log_model(self, local_dir: str | Path, name: str, params: Mapping[str, Any]) -> None:
        """Register the checkpoint in ``local_dir`` (already logged under the run's ``model/``) as an MLflow 3 logged
        model of this run, with its files when they are small."""
        values = param_values(params)
        call = partial(register_model, self.client, self.experiment_id, self.run_id, local_dir, name, values)
        self._call(call, "model", files=local_dir, name=name, params=values)


def register_model(
    client: MlflowClient,
    experiment_id: str,
    run_id: str,
    local_dir: str | Path,
    name: str,
    params: Mapping[str, str],
    model_id: str | None = None,
) -> str:
    """Register ``local_dir`` as the logged model ``name`` of run ``run_id`` (or complete the logged model
    ``model_id`` an interrupted replay created), with its files when they are small; the logged model's id."""
    uri = f"runs:/{run_id}/{name}"
    size = sum(f.stat().st_size for f in Path(local_dir).rglob("*") if f.is_file())
    tags = {"kbench.checkpoint_uri": uri, "kbench.checkpoint_bytes": str(size)}
    linked: set[str] = set()
    if model_id is None:
        model_id = client.create_logged_model(
            experiment_id, name=name, source_run_id=run_id, tags=tags, params=dict(params), model_type="kbench"
        ).model_id
    else:
        linked = {output.model_id for output in client.get_run(run_id).outputs.model_outputs}
    if size <= LOGGED_MODEL_MAX_BYTES:
        client.log_model_artifacts(model_id, str(local_dir))
    client.finalize_logged_model(model_id, LoggedModelStatus.READY)
    if model_id not in linked:
        client.log_outputs(run_id, [LoggedModelOutput(model_id, 0)])
    client.log_batch(run_id, tags=[RunTag("kbench.checkpoint_uri", uri), RunTag("kbench.logged_model", model_id)])
    return model_id


def summarize(tracking: Tracking, parent_id: str, run_ids: Iterable[str]) -> dict[str, float]:
    """Log on the parent run the mean over seeds of each metric of the trial runs ``run_ids`` (prefixed with the
    trial's model and variant when they are several), so the UI's charts and compare views show the invocation."""
    client = tracking.client()
    groups: dict[str, list[dict[str, float]]] = {}
    for run_id in run_ids:
        run = client.get_run(run_id)
        tags = run.data.tags
        group = "/".join(part for part in (tags.get("kbench.model"), _variant_name(tags)) if part)
        groups.setdefault(group, []).append(run.data.metrics)
    summary: dict[str, float] = {}
    for group, runs in groups.items():
        prefix = f"{group}/" if len(groups) > 1 else ""
        for key in sorted({k for metrics in runs for k in metrics}):
            values = [metrics[key] for metrics in runs if key in metrics]
            summary[f"{prefix}{key}"] = sum(values) / len(values)
    log_metrics(client, parent_id, summary)
    seeds = sorted({len(runs) for runs in groups.values()})
    client.set_tag(parent_id, "kbench.summary", f"mean over {'/'.join(map(str, seeds))} seed(s) of each trial")
    return summary


def _variant_name(tags: Mapping[str, str]) -> str:
    """The trial's variant as MLflow metric names allow it (``kpg:kaleido+sod`` -> ``kpg:kaleido_sod``)."""
    variant = tags.get("kbench.variant", "default")
    return "" if variant == "default" else re.sub(r"[^\w.\- /:]", "_", variant)


def experiment_url(base: str, experiment_id: str) -> str:
    """The UI's page of the experiment's runs table (MLflow 3's UI otherwise opens experiments on GenAI traces)."""
    return f"{base}/#/experiments/{experiment_id}/runs?{UI_QUERY}"


def ui_address(uri: str, port: int, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Where ``kbench ui`` points: the runs table of ``experiment`` when the store has it, else the UI's home."""
    base = f"http://127.0.0.1:{port}"
    try:
        found = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except MlflowException:
        return base
    return experiment_url(base, found.experiment_id) if found else base


def param_values(params: Mapping[str, Any]) -> dict[str, str]:
    """Params as MLflow stores them: strings, JSON for dicts and lists."""
    return {k: json.dumps(v) if isinstance(v, dict | list) else str(v) for k, v in params.items()}


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(k, v) for k, v in param_values(params).items()]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[i : i + _BATCH])


def log_inputs(client: MlflowClient, run_id: str, inputs: list[DatasetInput]) -> None:
    """``client.log_inputs``, tried once more when trials running side by side create the same dataset at once: a SQL
    store looks a dataset up, then inserts it, and the later insert breaks the key (experiment, name, digest)."""
    try:
        client.log_inputs(run_id, inputs)
    except MlflowException as exc:
        if exc.error_code != "BAD_REQUEST" or "datasets" not in exc.message:
            raise
        client.log_inputs(run_id, inputs)  # the dataset exists now: the store only links it to the run


def metric_items(metrics: Mapping[str, float], step: int = 0) -> list[Metric]:
    """``metrics`` as MLflow metrics at ``step``, stamped now."""
    return [Metric(k, float(v), _now_ms(), step) for k, v in metrics.items()]


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    log_metric_items(client, run_id, metric_items(metrics, step))


def log_metric_items(client: MlflowClient, run_id: str, items: list[Metric]) -> None:
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (the form configs take as params and ``--set`` keys)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)


def trial_runs(tracking: Tracking, model: str) -> list[Any]:
    """Every trial run of ``model`` in the experiment, whatever its status, newest first."""
    client = tracking.client()
    runs, page = [], None
    while True:
        batch = client.search_runs(
            [tracking.experiment_id],
            f"tags.`kbench.model` = '{model}'",
            max_results=1000,
            order_by=["attributes.start_time DESC"],
            page_token=page,
        )
        runs += batch
        page = batch.token
        if not page:
            return runs


def settle(tracking: Tracking, keys: dict[str, tuple[str, str, str]], tasks: str) -> set[str]:
    """Of the trials ``keys`` names (label -> (model, variant, config hash)), those with a FINISHED run for
    ``tasks``. Runs of those trials left RUNNING by an invocation that was killed are marked KILLED, so that once
    the rest has run there is exactly one finished result per trial; so are that invocation's parent run and any
    other parent run left RUNNING for these trials (by its ``kbench.config_hashes`` and tasks). A parent run whose
    heartbeat says its invocation is alive, and its trial runs, are left as they are."""
    client = tracking.client()
    query = partial(client.search_runs, [tracking.experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
    running = None
    if not is_pending(tracking.experiment_id):
        try:
            running = retrying(query)
        except Exception as exc:
            if not unreachable(exc):
                raise
    if running is None:
        raise KbenchError(f"--resume needs the tracking store {tracking.uri} to tell finished trials: unreachable")
    now = time.time()
    live = {run.info.run_id for run in running if alive(run, now)}
    finished: set[str] = set()
    parents: set[str] = set()
    for label, run in _trial_runs(tracking, keys, tasks):
        parent = run.data.tags.get("mlflow.parentRunId", "")
        if run.info.status == "FINISHED":
            finished.add(label)
        elif run.info.status == "RUNNING" and parent not in live:
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            parents.add(parent)
    hashes = {config for _, _, config in keys.values()}
    killed = []
    for run in running:
        ours = set(run.data.tags.get("kbench.config_hashes", "").split(",")) & hashes
        if run.info.run_id in live:
            continue
        if run.info.run_id in parents or (ours and run.data.params.get("tasks") == tasks):
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            killed.append(f"{run.info.run_name} ({run.info.run_id[:8]})")
    if killed:
        log.info("marked KILLED the runs an interrupted invocation left RUNNING: %s", ", ".join(killed))
    return finished


def finished_runs(tracking: Tracking, keys: dict[str, tuple[str, str, str]], tasks: str) -> dict[str, str]:
    """The newest FINISHED run id for ``tasks`` of each trial ``keys`` names (label -> (model, variant, config
    hash)) that has one. Variants can share a config (the full model is a column of every block), hence the variant.
    """
    found: dict[str, str] = {}
    for label, run in _trial_runs(tracking, keys, tasks):
        if run.info.status == "FINISHED":
            found.setdefault(label, run.info.run_id)  # trial_runs lists the newest first
    return found


def _trial_runs(tracking: Tracking, keys: dict[str, tuple[str, str, str]], tasks: str) -> Iterator[tuple[str, Any]]:
    """``(label, run)`` for every run of a trial ``keys`` names, for ``tasks``, newest first."""
    wanted = {key: label for label, key in keys.items()}
    for model in {m for m, _, _ in keys.values()}:
        for run in trial_runs(tracking, model):
            tags = run.data.tags
            label = wanted.get((model, tags.get("kbench.variant"), tags.get("kbench.config_hash")))
            if label is not None and tags.get("kbench.tasks") == tasks:
                yield label, run
