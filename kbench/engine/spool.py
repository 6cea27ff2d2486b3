"""A local spool of tracking calls: what runs log while the tracking store is unreachable (after MLflow's retries and
ours), kept under ``KBENCH_HOME/spool`` until ``replay`` puts them in the store (``kbench sync``, ``--resume``).

One folder per invocation (named by its parent run, or the pending id of one the store could not create yet), one
JSON-lines file per run (``parent.jsonl`` for the parent), one record per call, each fsynced before the call returns;
files logged are copied beside it (``.files``); the records replayed are marked in a ``.done`` file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from kbench.core.paths import cache_dir

log = logging.getLogger(__name__)

EXIT_STATUS = 3  # the CLI's status when results are whole but spooled
PARENT = "parent"
PENDING = "pending-"  # the local id of an experiment or parent run the store could not create yet
RETRY_DELAYS = (1.0, 4.0)  # seconds between our attempts, after MLflow's own retries of each request
RUN_KEY = "kbench.run_key"  # a trial run's tag, made before the run
_T = TypeVar("_T")


class Spooled(Exception):
    """The invocation's results are whole but in the spool, the tracking store being unreachable."""

    def __init__(self, uri: str, trials: int, path: Path) -> None:
        super().__init__(
            f"tracking store {uri} unreachable; results of {trials} trial{'' if trials == 1 else 's'} spooled in "
            f"{path}; run `kbench sync` (or --resume) when it is back"
        )


def spool_root() -> Path:
    return cache_dir("spool")


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store could not be reached or could not answer (not that the call was wrong)."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, MlflowException):
        return exc.error_code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
    return isinstance(exc, OSError | OperationalError)  # requests' errors are OSErrors


def is_pending(identifier: str | None) -> bool:
    """Whether ``identifier`` names an experiment or a parent run that only exists in the spool so far."""
    return bool(identifier) and identifier.startswith(PENDING)


def retrying(call: Callable[[], _T], delays: tuple[float, ...] = RETRY_DELAYS) -> _T:
    """``call()``, tried again after each of ``delays`` while the store is unreachable."""
    for delay in delays:
        try:
            return call()
        except Exception as exc:
            if not unreachable(exc):
                raise
            log.debug("tracking store unreachable (%s); retrying in %.0f s", _first_line(exc), delay)
            time.sleep(delay)
    return call()


class Spool:
    """The spooled calls of one run: ``<invocation>/<name>.jsonl``, its ``.done`` marks and ``.files`` folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done = path.with_suffix(".done")
        self.files = path.with_suffix(".files")

    @classmethod
    def start(cls, invocation: str, name: str, head: Mapping[str, Any]) -> Spool:
        """A new spool for run ``name`` of ``invocation`` (the parent run's id), opened by the record ``head``: where
        and how the run is (or is to be) created."""
        folder = spool_root() / invocation
        folder.mkdir(parents=True, exist_ok=True)
        stem = PARENT if name == PARENT else f"{_safe(name)}-{uuid.uuid4().hex[:8]}"
        spool = cls(folder / f"{stem}.jsonl")
        spool.append("run", **head)
        return spool

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def append(self, op: str, files: str | Path | None = None, **fields: Any) -> None:
        """Record the call ``op``; ``files`` (a file or a folder) are copied into the spool first."""
        seq = len(self.records()) if self.path.exists() else 0
        if files is not None:
            target = self.files / str(seq)
            shutil.rmtree(target, ignore_errors=True)
            if Path(files).is_dir():
                shutil.copytree(files, target)
            else:
                target.mkdir(parents=True)
                shutil.copy2(files, target)
            fields["files"] = str(target.relative_to(self.path.parent))
        append_line(self.path, json.dumps({"seq": seq, "op": op, **fields}))


def record_call(
    spool: Spool | None, start: Callable[[], Spool], call: Callable[[], object], op: str, **fields: Any
) -> Spool | None:
    """Make the tracking ``call`` (with retries) unless the run already spools; if the store is unreachable, spool it
    as record ``op`` in the spool ``start`` opens. The run's spool from now on, if any."""
    if spool is None:
        try:
            retrying(call)
            return None
        except Exception as exc:
            if not unreachable(exc):
                raise
            spool = start()
    spool.append(op, **fields)
    return spool


def parent_spool(uri: str, experiment_id: str, parent_id: str) -> Spool:
    """The spool of the parent run ``parent_id`` (which exists in the store), opened on first use."""
    path = spool_root() / parent_id / f"{PARENT}.jsonl"
    if path.exists():
        return Spool(path)
    return Spool.start(parent_id, PARENT, {"uri": uri, "experiment_id": experiment_id, "run_id": parent_id})


def parent_call(
    uri: str, experiment_id: str, parent_id: str, call: Callable[[], object], op: str, **fields: Any
) -> None:
    """Make the tracking ``call`` on the parent run (with retries), or record it as ``op`` in the parent's spool: once
    the store was unreachable (or the run is pending), every later call of the parent goes there, in order."""
    if not (spool_root() / parent_id / f"{PARENT}.jsonl").exists():
        try:
            retrying(call)
            return
        except Exception as exc:
            if not unreachable(exc):
                raise
    parent_spool(uri, experiment_id, parent_id).append(op, **fields)


def end_parent(uri: str, experiment_id: str, parent_id: str, status: str) -> None:
    """End the parent run with ``status``, in the spool if the store is unreachable (never raising for that, so
    that the error ending the invocation is the one shown)."""
    from mlflow.tracking import MlflowClient

    end = _now_ms()
    call = partial(MlflowClient(tracking_uri=uri).set_terminated, parent_id, status, end)
    parent_call(uri, experiment_id, parent_id, call, "terminate", status=status, end_time=end)


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and make it durable before returning."""
    with path.open("a") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _first_line(exc: BaseException) -> str:
    return next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)
