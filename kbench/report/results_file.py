"""The results file of one invocation: a JSON document of what ran (the invocation, the resolved config, versions,
git sha, data fingerprint, config hashes), its metrics with their intervals, and where MLflow keeps its runs and
per-sample files; logged as ``results.json`` on the invocation's parent run, and written to ``--output-path DIR``.
The schema is docs/results-file.md and kbench/schemas/results.schema.json.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import platform
import re
import tempfile
import time
from collections.abc import Mapping
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

import kbench
from kbench.core.config import Config
from kbench.core.errors import KbenchError
from kbench.core.paths import file_mode
from kbench.engine.tracking import git_sha
from kbench.tasks.samples import ARTIFACT_DIR

SCHEMA_VERSION = 1
PACKAGES = ("torch", "transformers", "ray", "mlflow", "numpy")
RESULTS_ARTIFACT = "results.json"  # the results file, at the artifact root of the invocation's parent run


def schema() -> dict[str, Any]:
    """The JSON Schema results files follow, shipped with kbench."""
    return json.loads(resources.files("kbench").joinpath("schemas/results.schema.json").read_text())


def output_dir(path: str | Path) -> Path:
    """``path`` as a directory to write results files into, created if missing; checked before any work starts."""
    directory = Path(path).expanduser()
    if directory.exists() and not directory.is_dir():
        raise KbenchError(f"--output-path {path} is a file; it takes a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KbenchError(f"--output-path {path}: cannot create the directory ({exc.strerror})") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise KbenchError(f"--output-path {path}: the directory is not writable")
    return directory


def versions() -> dict[str, str | None]:
    """kbench's, Python's and the main libraries' versions in this process (None for one not installed)."""
    found: dict[str, str | None] = {"kbench": kbench.__version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def write(directory: Path, stem: str, document: Mapping[str, Any]) -> Path:
    """Write ``document`` to ``<stem>-<UTC time>.json`` in ``directory``, never over an existing file (``-2``,
    ``-3``... on a clash) and never half-written: a temporary file is linked into place once complete."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", stem)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(dumps(document))
        os.chmod(tmp, file_mode())
        for n in itertools.count(1):
            final = directory / f"{stem}-{stamp}{'' if n == 1 else f'-{n}'}.json"
            with contextlib.suppress(FileExistsError):
                os.link(tmp, final)
                return final
    finally:
        os.unlink(tmp)
    raise AssertionError("unreachable")


def run_document(
    command: str,
    invocation: Mapping[str, Any],
    cfg: Config,
    uri: str,
    experiment: str,
    parent_run_id: str | None,
    run_ids: Mapping[str, str],
    summary: pd.DataFrame,
    runs: pd.DataFrame,
) -> dict[str, Any]:
    """The results file of ``kbench run`` or ``kbench ablate``: ``summary`` is ``Results.to_pandas()`` (the
    intervals), ``runs`` is ``Results.runs()`` (the per-seed values); everything else is read from MLflow."""
    client = MlflowClient(tracking_uri=uri)
    trials = [trial_record(client, label, run_id) for label, run_id in run_ids.items()]
    fingerprints = {t["data_fingerprint"] for t in trials}
    return {
        **_head(command, invocation, cfg, client, uri, experiment, parent_run_id, run_ids),
        "dataset": {
            "name": cfg.data.dataset,
            "fingerprint": fingerprints.pop() if len(fingerprints) == 1 else None,
        },
        "trials": trials,
        "results": results(summary, runs),
    }


def tune_document(
    invocation: Mapping[str, Any], cfg: Config, uri: str, experiment: str, parent_run_id: str
) -> dict[str, Any]:
    """The results file of ``kbench tune``: its parent run ``parent_run_id``, every sample's recipe, status and dev
    metrics, and the best recipe, read from MLflow."""
    from kbench.data import load_dataset

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=1000
    )
    samples = [
        {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": r.info.status,
            "recipe": dict(r.data.params),
            "stopped_at": _int(r.data.tags.get("kbench.stopped_at")),
            "metrics": dict(r.data.metrics),
        }
        for r in sorted(children, key=lambda r: r.info.start_time)
    ]
    params = parent.data.params
    best_recipe = {k.removeprefix("best."): v for k, v in params.items() if k.startswith("best.")}
    best = next((s for s in samples if s["recipe"] == best_recipe), None)
    metric = params["metric"]
    run_ids = {s["run_name"]: s["run_id"] for s in samples}
    return {
        **_head("tune", invocation, cfg, client, uri, experiment, parent_run_id, run_ids),
        "dataset": {"name": cfg.data.dataset, "fingerprint": load_dataset(cfg.data).fingerprint},
        "search": {
            "metric": metric,
            "space": params["space"],
            "scheduler": params["scheduler"],
            "samples": samples,
            "best": {
                "recipe": best_recipe,
                "value": parent.data.metrics.get(f"best/{metric.replace('/', '_')}"),
                "run_id": best["run_id"] if best else None,
            },
        },
    }


def save_tune(
    directory: str | Path | None,
    invocation: Mapping[str, Any],
    cfg: Config,
    uri: str,
    experiment: str,
    parent_run_id: str,
) -> Path | None:
    """Record the results file of the ``kbench tune`` run ``invocation`` describes (its parent run
    ``parent_run_id``): always in MLflow and, given ``directory``, there too; return that file."""
    document = tune_document(invocation, cfg, uri, experiment, parent_run_id)
    return record(document, uri, parent_run_id, directory, f"tune-{invocation['model']}-{invocation['task']}")


def record(
    document: Mapping[str, Any], uri: str, parent_run_id: str | None, directory: str | Path | None, stem: str
) -> Path | None:
    """Log ``document`` as ``results.json`` at the artifact root of the invocation's parent run (where there is one,
    so that tracking has it without ``--output-path``) and, given ``directory``, write it there; return that file."""
    if parent_run_id is not None:
        MlflowClient(tracking_uri=uri).log_text(parent_run_id, dumps(document), RESULTS_ARTIFACT)
    return None if directory is None else write(output_dir(directory), stem, document)


def dumps(document: Mapping[str, Any]) -> str:
    """A results file's text, the same locally and in MLflow."""
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def trial_record(client: MlflowClient, label: str, run_id: str) -> dict[str, Any]:
    """One trial's run as MLflow has it: hashes, data fingerprint, versions, its metrics and per-sample files."""
    run = client.get_run(run_id)
    tags = run.data.tags
    artifact_uri = run.info.artifact_uri.rstrip("/")
    samples = {
        Path(f.path).stem: f"{artifact_uri}/{f.path}"
        for f in client.list_artifacts(run_id, ARTIFACT_DIR)
        if f.path.endswith(".jsonl")
    }
    return {
        "label": label,
        "run_id": run_id,
        "parent_run_id": tags.get("mlflow.parentRunId"),
        "status": run.info.status,
        "model": tags["kbench.model"],
        "variant": tags.get("kbench.variant", "default"),
        "seed": int(tags["kbench.seed"]),
        "config_hash": tags.get("kbench.config_hash"),
        "config_key": tags.get("kbench.config_key"),
        "data_fingerprint": tags.get("kbench.data_fingerprint"),
        "tasks": tags.get("kbench.tasks", "").split(","),
        "task_versions": tags.get("kbench.task_versions"),
        "kbench_version": tags.get("kbench.version"),
        "git_sha": tags.get("kbench.git_sha"),
        "artifact_uri": artifact_uri,
        "metrics": dict(run.data.metrics),
        "samples": samples,
    }


def results(summary: pd.DataFrame, runs: pd.DataFrame) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``{"model[:variant]": {task: {metric: {mean, ci_low, ci_high, interval, n_seeds, per_seed}}}}`` from the
    rows of ``Results.to_pandas()``, with each seed's value from its run."""
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for row in summary.itertuples():
        group = runs[(runs["model"] == row.model) & (runs["variant"] == row.variant)]
        column = f"{row.task}/{row.metric}"
        group = group[group[column].notna()].sort_values("seed", key=lambda s: s.astype(int))
        name = row.model if row.variant == "default" else f"{row.model}:{row.variant}"
        out.setdefault(name, {}).setdefault(row.task, {})[row.metric] = {
            "mean": _float(row.value),
            "ci_low": _float(row.ci_low),
            "ci_high": _float(row.ci_high),
            "interval": None if row.interval == "n/a" else row.interval,
            "n_seeds": int(row.seeds),
            "per_seed": [
                {"seed": int(seed), "value": float(value), "run_id": run_id}
                for seed, value, run_id in zip(group["seed"], group[column], group["run_id"], strict=True)
            ],
        }
    return out


def _head(
    command: str,
    invocation: Mapping[str, Any],
    cfg: Config,
    client: MlflowClient,
    uri: str,
    experiment: str,
    parent_run_id: str | None,
    run_ids: Mapping[str, str],
) -> dict[str, Any]:
    """The fields every results file has: what ran, with what, and where MLflow keeps it."""
    found = client.get_experiment_by_name(experiment)
    sha = client.get_run(parent_run_id).data.tags.get("kbench.git_sha") if parent_run_id else None
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "invocation": _plain(invocation),
        "config": _plain(cfg.to_dict()),
        "versions": versions(),
        "git_sha": sha or git_sha(),
        "mlflow": {
            "tracking_uri": uri,
            "experiment": experiment,
            "experiment_id": found.experiment_id,
            "parent_run_id": parent_run_id,
            "child_run_ids": dict(run_ids),
        },
    }


def _plain(value: Any) -> Any:
    """``value`` with paths and tuples as JSON has them."""
    return json.loads(json.dumps(value, default=str))


def _float(value: Any) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)
