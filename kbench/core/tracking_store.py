"""The tracking store: where runs go (``--tracking-uri`` resolved) and reading finished runs back.

Reading is what ``kbench table`` and ``kbench compare`` do, and it must be quick. A local SQLite store (the default)
with local artifacts is read directly with ``sqlite3``, read-only, from the tables of MLflow's schema that have not
changed since MLflow 1 (``experiments``, ``runs``, ``tags``, ``params``, ``latest_metrics``): importing MLflow
alone takes longer than a table should. Any other store, or a SQLite file those queries cannot read, goes through
``MlflowClient``; tests hold the two readers equal on a store MLflow wrote.
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from kbench.core.errors import KbenchError

DEFAULT_EXPERIMENT = "kbench"
DEFAULT_DB = "mlflow.db"
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
SQLITE_PREFIX = "sqlite:///"
# The schemes of MLflow's tracking stores (MLflow 3).
SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def tracking_uri(cli: str | None = None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite file in the working directory; a plain path
    (``./my.db``, a directory) becomes a SQLite URI."""
    uri = cli or os.environ.get("MLFLOW_TRACKING_URI")
    return store_uri(uri) if uri else f"{SQLITE_PREFIX}{Path.cwd() / DEFAULT_DB}"


def store_uri(value: str) -> str:
    """A tracking URI as given, or a plain path as SQLite: ``*.db`` (``.sqlite``) is the database file, any other
    path a directory that holds ``mlflow.db``. A relative ``sqlite:///`` path is made absolute here, on the driver:
    trials run in Ray's directories, where it would name another file."""
    database = sqlite_path(value)
    if database is not None and str(database) not in ("", ":memory:") and not database.is_absolute():
        return f"{SQLITE_PREFIX}{Path.cwd() / database}"
    if _URI_SCHEME.match(value):
        return _supported(value)
    path = Path(value).expanduser().resolve()
    if path.suffix in SQLITE_SUFFIXES:
        return f"{SQLITE_PREFIX}{path}"
    if path.is_file():
        raise KbenchError(
            f"tracking store {value} is a file but not a SQLite one ({', '.join(SQLITE_SUFFIXES)}); "
            "give a .db path, a directory or a URI such as sqlite:///runs.db"
        )
    return f"{SQLITE_PREFIX}{path / DEFAULT_DB}"


def _supported(uri: str) -> str:
    """``uri`` if MLflow keeps runs under its scheme (a database's may name a driver: ``postgresql+psycopg2``)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in SCHEMES:
        raise KbenchError(
            f"tracking URI {uri}: unknown scheme {scheme!r}; MLflow keeps runs under {', '.join(SCHEMES)} URIs, "
            "or give a path for a SQLite store"
        )
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the working directory unless absolute, as in
    SQLAlchemy), else None."""
    return Path(uri.removeprefix(SQLITE_PREFIX)) if uri.startswith(SQLITE_PREFIX) else None


@dataclass
class FinishedRun:
    """One finished, not deleted run as a search of the store returns it: its latest metrics, params and tags."""

    run_id: str
    start_time: int  # ms since the epoch
    artifact_uri: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def finished_runs(uri: str, experiment: str) -> list[FinishedRun]:
    """The finished runs of ``experiment`` in store ``uri``, newest first (ties by run id). A missing SQLite file or
    experiment is a KbenchError."""
    database = sqlite_path(uri)
    if database is not None:
        if not database.exists():
            raise KbenchError(f"no MLflow tracking store at {database}; run `kbench run` first")
        try:
            runs = _sqlite_runs(database, experiment)
        except sqlite3.Error:  # not a schema these queries know: MLflow decides
            runs = _client_runs(uri, experiment)
    else:
        runs = _client_runs(uri, experiment)
    if runs is None:
        raise KbenchError(f"no experiment {experiment!r} in tracking store {uri}")
    return sorted(runs, key=lambda r: (-r.start_time, r.run_id))


def read_artifact(uri: str, run_id: str, path: str, artifact_uri: str | None = None) -> str | None:
    """The text of artifact ``path`` of run ``run_id``, None when the run has no such artifact. Given the run's
    artifact URI (as :func:`finished_runs` returns it), a local artifact store is read in place; otherwise the file
    is downloaded through MLflow."""
    local = _local_dir(artifact_uri) if artifact_uri else None
    if local is not None:
        file = local / path
        return file.read_text() if file.is_file() else None
    return _client_artifact(uri, run_id, path)


def _sqlite_runs(database: Path, experiment: str) -> list[FinishedRun] | None:
    with sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True) as db:
        found = db.execute("SELECT experiment_id FROM experiments WHERE name = ?", (experiment,)).fetchone()
        if found is None:
            return None
        chosen = (
            "SELECT run_uuid FROM runs WHERE experiment_id = ? AND status = 'FINISHED' AND lifecycle_stage = 'active'"
        )
        runs = {
            run_id: FinishedRun(run_id, int(start or 0), artifact_uri)
            for run_id, start, artifact_uri in db.execute(
                f"SELECT run_uuid, start_time, artifact_uri FROM runs WHERE run_uuid IN ({chosen})", found
            )
        }
        for run_id, key, value in db.execute(
            f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({chosen})", found
        ):
            runs[run_id].tags[key] = value
        for run_id, key, value in db.execute(
            f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({chosen})", found
        ):
            runs[run_id].params[key] = value
        for run_id, key, value, is_nan in db.execute(
            f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE run_uuid IN ({chosen})", found
        ):
            runs[run_id].metrics[key] = float("nan") if is_nan else float(value)
    return list(runs.values())


def _client_runs(uri: str, experiment: str) -> list[FinishedRun] | None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return None
        runs, page = [], None
        while True:
            batch = client.search_runs(
                [found.experiment_id], "attributes.status = 'FINISHED'", max_results=1000, page_token=page
            )
            runs += [
                FinishedRun(
                    r.info.run_id,
                    r.info.start_time,
                    r.info.artifact_uri,
                    dict(r.data.tags),
                    dict(r.data.params),
                    dict(r.data.metrics),
                )
                for r in batch
            ]
            page = batch.token
            if not page:
                return runs
    except MlflowException as exc:
        raise KbenchError(f"cannot read tracking store {uri}: {exc.message.splitlines()[0]}") from None


def _local_dir(artifact_uri: str) -> Path | None:
    """The directory of a ``file:`` (or plain path) artifact URI, None for a remote or proxied one."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if not parsed.scheme and artifact_uri:
        return Path(artifact_uri)
    return None


def _client_artifact(uri: str, run_id: str, path: str) -> str | None:
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    folder = str(Path(path).parent) if Path(path).parent != Path(".") else None
    try:
        if path not in {info.path for info in client.list_artifacts(run_id, folder)}:
            return None
        previous = os.environ.get(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
        os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"  # many small files: bars would bury output
        try:
            with tempfile.TemporaryDirectory() as tmp:
                return Path(client.download_artifacts(run_id, path, tmp)).read_text()
        finally:
            if previous is None:
                del os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name]
            else:
                os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = previous
    except MlflowException as exc:
        raise KbenchError(f"cannot read run {run_id} in {uri}: {exc.message.splitlines()[0]}") from None
