"""Which runs a table cell aggregates: like with like.

A cell averages the seeds of one configuration only: runs of one (model, variant) that share their seed-free config
key (the ``kbench.config_key`` tag; for older runs, a digest of their logged params less the seed and the
scheduling keys) and data fingerprint. Where a (model, variant) has runs under several configurations, the newest
configuration's are used (or the one ``--config-hash`` names) and a note names the keys that differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd

from kbench.core.config import SCHEDULING, Config, digest
from kbench.core.errors import KbenchError
from kbench.engine.ablations import BLOCKS

IGNORED_PARAMS = {"seed", *SCHEDULING}  # params that never make two runs' configurations differ
SHOWN_DIFFERENCES = 4  # keys a note names before "and N more"


@dataclass
class Selection:
    """The runs a table shows (one configuration per (model, variant), the newest run per seed) and why."""

    runs: pd.DataFrame
    profile: str
    dataset: str
    notes: list[str] = field(default_factory=list)  # one per (model, variant) whose other configurations were left out


def select(
    runs: pd.DataFrame,
    profile: str | None,
    dataset: str | None,
    limit: int | None = None,
    config_hash: str | None = None,
    match: Config | None = None,
) -> Selection:
    """Runs of one profile and dataset (default: those of the newest run; ``match``'s when given), one configuration
    per (model, variant), the newest run per seed.

    Runs limited to the first N products (``--limit``) are only ever tabulated with runs of the same limit: without
    ``limit``, only full runs are. ``config_hash`` (a prefix of a config key) picks the configuration of the (model,
    variant)s that have it; ``match`` keeps only runs whose configuration is the one ``kbench run`` (or ``kbench
    ablate``) would resolve from it.
    """
    if runs.empty:
        raise KbenchError("no finished kbench runs to tabulate; run `kbench run` first")
    limits = runs["limit"] if "limit" in runs else pd.Series(None, index=runs.index, dtype=object)
    runs = runs[limits.isna()] if limit is None else runs[limits == str(limit)]
    if runs.empty:
        which = "full (not --limit)" if limit is None else f"--limit {limit}"
        raise KbenchError(f"no finished {which} kbench runs to tabulate")
    if match is not None:
        profile, dataset = match.profile, match.data.dataset
    profile = profile or runs["profile"].iloc[0]
    dataset = dataset or runs["dataset"].iloc[0]
    chosen = runs[(runs["profile"] == profile) & (runs["dataset"] == dataset)].copy()
    if chosen.empty:
        raise KbenchError(f"no finished runs with profile {profile!r} and dataset {dataset!r}")
    chosen["key"] = [run_key(row) for _, row in chosen.iterrows()]
    fingerprints = chosen["data_fingerprint"] if "data_fingerprint" in chosen else pd.Series("", index=chosen.index)
    chosen["group"] = chosen["key"] + "/" + fingerprints.fillna("").astype(str)
    if match is not None:
        chosen = chosen[[matches(row, match) for _, row in chosen.iterrows()]]
        if chosen.empty:
            raise KbenchError(f"no finished runs match profile {profile!r} with the given --set and --config")
    if config_hash is not None and not chosen["key"].str.startswith(config_hash).any():
        raise KbenchError(f"no finished runs with config key {config_hash}*; `kbench table` captions name the keys")
    kept, notes = [], []
    for (model, variant), runs_of in chosen.groupby(["model", "variant"], sort=False):
        picked = runs_of[runs_of["key"].str.startswith(config_hash)] if config_hash else runs_of.iloc[:0]
        group = (picked if not picked.empty else runs_of)["group"].iloc[0]  # runs are newest first
        kept.append(runs_of[runs_of["group"] == group])
        others = runs_of[runs_of["group"] != group]
        if not others.empty:
            notes.append(_note(model, variant, runs_of[runs_of["group"] == group].iloc[0], others, not picked.empty))
    runs = pd.concat(kept).sort_values("start_time", ascending=False)
    return Selection(runs.drop_duplicates(["model", "variant", "seed"]), profile, dataset, notes)


def run_key(run: pd.Series) -> str:
    """The run's seed-free config key: its ``kbench.config_key`` tag, else a digest of its params less the seed."""
    key = run.get("config_key")
    if isinstance(key, str) and key:
        return key
    return digest(_compared(run))


def _compared(run: pd.Series) -> dict[str, str]:
    """The run's logged params that describe its configuration."""
    params = run.get("params")
    given = params if isinstance(params, dict) else {}  # hash.* params are per trial, and tags too
    return {k: v for k, v in given.items() if k not in IGNORED_PARAMS and not k.startswith("hash.")}


def matches(run: pd.Series, base: Config) -> bool:
    """Whether ``run``'s configuration is the one a trial of its model and variant gets from ``base``."""
    from kbench.engine.tracking import flatten
    from kbench.engine.trial import TrialSpec, config_key, trial_config

    variants = {v.tag: v for block in BLOCKS.values() for v in block}
    if run["variant"] != "default" and run["variant"] not in variants:
        return False
    overrides = variants[run["variant"]].overrides(run["model"]) if run["variant"] != "default" else ()
    spec = TrialSpec(run["model"], 0, run["variant"], overrides)
    key = run.get("config_key")
    if isinstance(key, str) and key:
        return key == config_key(base, spec)
    expected = {**flatten(trial_config(base, spec).to_dict()), "model.name": spec.model}
    return _compared(run) == {k: _param_text(v) for k, v in expected.items() if k not in IGNORED_PARAMS}


def _param_text(value: object) -> str:
    """A config value as ``kbench.engine.tracking.log_params`` logs it."""
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _note(model: str, variant: str, shown: pd.Series, others: pd.DataFrame, picked: bool) -> str:
    """What the caption says of a (model, variant) whose runs under other configurations were left out."""
    name = model if variant == "default" else f"{model} {variant}"
    which = f"config {shown['key'][:8]} (--config-hash)" if picked else f"newest config's runs ({shown['key'][:8]})"
    newest = others.drop_duplicates("group")
    mine = _compared(shown)
    keys = sorted({k for _, other in newest.iterrows() for k in _differing(mine, _compared(other))})
    parts = [f"{k} ({_values(mine.get(k), [_compared(o).get(k) for _, o in newest.iterrows()])})" for k in keys]
    if (newest["group"].str.split("/").str[1] != shown["group"].split("/")[1]).any():
        parts.append("data fingerprint")
    if not parts:
        parts.append(f"config key ({shown['key'][:8]} vs {', '.join(k[:8] for k in newest['key'].unique())})")
    if len(parts) > SHOWN_DIFFERENCES:
        parts = [*parts[:SHOWN_DIFFERENCES], f"{len(parts) - SHOWN_DIFFERENCES} more keys"]
    return f"{name}: {which} shown; other runs differ in {', '.join(parts)}; pick one with --config-hash"


def _differing(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def _values(shown: str | None, others: list[str | None]) -> str:
    """``shown vs other, ...``, missing values as "unset"."""
    rest = list(dict.fromkeys("unset" if v is None else v for v in others if v != shown))
    return f"{'unset' if shown is None else shown} vs {', '.join(rest)}"
