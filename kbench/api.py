"""kbench from Python: ``kbench.evaluate`` and ``kbench.ablate`` run what ``kbench run`` and ``kbench ablate`` run
and return a ``Results`` object; the command line is a thin layer over these two functions.

    import kbench
    results = kbench.evaluate("fashionbert", tasks=["itr", "cr"], profile="smoke", seeds=2)
    results.to_pandas()        # one row per (model, variant, metric): value, 95 % interval, seeds, run ids
    print(results.table())     # the paper's tables, built from these runs, the published numbers beside
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kbench.core.config import Config, override_strings, resolve_config
from kbench.core.errors import KbenchError
from kbench.core.progress import set_verbose
from kbench.core.tracking_store import tracking_uri
from kbench.engine.ablations import blocks
from kbench.engine.checkpoints import is_run_uri, model_of, own_options, save_instance
from kbench.engine.runner import ablation_specs, execute, model_specs, parse_models
from kbench.engine.trial import TrialSpec
from kbench.models.base import VLPreTrainedModel
from kbench.models.zoo import MODELS
from kbench.report.results_file import output_dir, record, run_document, write
from kbench.report.tables import Samples, build_ablation, build_main, interval, load_runs
from kbench.tasks import parse_tasks

log = logging.getLogger(__name__)

Overrides = Mapping[str, Any] | Sequence[str]


@dataclass
class Results:
    """The finished runs of one ``evaluate`` or ``ablate`` call, read back from MLflow."""

    config: Config
    tracking_uri: str
    experiment: str
    run_ids: dict[str, str]  # trial label (model[/variant]/seedN) -> its finished MLflow run
    parent_run_id: str | None  # the invocation's parent run; None when every trial had finished before
    blocks: tuple[str, ...] = ()  # the ablation blocks, for an ``ablate`` call
    model: str | None = None  # the ablated model, for an ``ablate`` call
    invocation: dict[str, Any] = field(default_factory=dict)  # the call's arguments, as its results file records

    def runs(self) -> pd.DataFrame:
        """One row per run: its tags (model, variant, seed, config hash...), metrics and params."""
        runs = load_runs(self.tracking_uri, self.experiment)
        return runs[runs["run_id"].isin(set(self.run_ids.values()))].reset_index(drop=True)

    def to_pandas(self) -> pd.DataFrame:
        """One row per (model, variant, metric): the mean over seeds, its 95 % interval (a t-interval over seeds
        where there are 2 or more, else a bootstrap over test items), the number of seeds and the run ids."""
        runs, samples, rows = self.runs(), Samples(self.tracking_uri), []
        for (model, variant), group in runs.groupby(["model", "variant"], sort=False):
            for metric in sorted(c for c in group.columns if "/" in c and not c.startswith(("time/", "mem/"))):
                if group[metric].isna().all():
                    continue
                value, half, n, kind = interval(group, metric, samples)
                rows.append(
                    {
                        "model": model,
                        "variant": variant,
                        "task": metric.split("/")[0],
                        "metric": metric.split("/", 1)[1],
                        "value": value,
                        "ci_low": None if half is None else value - half,
                        "ci_high": None if half is None else value + half,
                        "interval": kind or "n/a",
                        "seeds": n,
                        "run_ids": ",".join(group.loc[group[metric].notna(), "run_id"]),
                    }
                )
        return pd.DataFrame(rows)

    def metrics(self) -> dict[str, dict[str, float]]:
        """``{"model[:variant]": {"task/metric": mean over seeds}}``."""
        out: dict[str, dict[str, float]] = {}
        for row in self.to_pandas().itertuples():
            name = row.model if row.variant == "default" else f"{row.model}:{row.variant}"
            out.setdefault(name, {})[f"{row.task}/{row.metric}"] = row.value
        return out

    def table(self, fmt: str = "md") -> str:
        """The paper's tables (the main ones, or the ablation blocks) of runs made with this config, the published
        numbers beside; ``fmt`` is md, latex, csv or html."""
        cfg = self.config
        selection = {"limit": cfg.data.limit, "match": cfg}
        if self.blocks:
            return "\n".join(
                build_ablation(self.tracking_uri, self.experiment, b, fmt, model=self.model or "kaleido", **selection)
                for b in self.blocks
            )
        return build_main(self.tracking_uri, self.experiment, fmt, **selection)

    def document(self) -> dict[str, Any]:
        """The results file of these runs (docs/results-file.md), read back from MLflow."""
        return run_document(
            "ablate" if self.blocks else "run",
            self.invocation,
            self.config,
            self.tracking_uri,
            self.experiment,
            self.parent_run_id,
            self.run_ids,
            self.to_pandas(),
            self.runs(),
        )

    def save(self, directory: str | Path) -> Path:
        """Write the results file of these runs (docs/results-file.md) into ``directory``; return its path."""
        return write(output_dir(directory), self.stem(), self.document())

    def stem(self) -> str:
        """The results file's name before its time: the model(s), or ``ablate-<model>``."""
        models = sorted({label.split("/")[0] for label in self.run_ids})
        return f"ablate-{self.model}" if self.blocks else ("+".join(models) if len(models) <= 3 else "models")


def evaluate(
    model: str | Sequence[str] | Path | VLPreTrainedModel | None = None,
    tasks: str | Sequence[str] = "all",
    *,
    checkpoint: str | Path | None = None,
    finetune: bool = True,
    profile: str = "default",
    overrides: Overrides = (),
    config_files: Sequence[Path] = (),
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    seeds: int | Sequence[int] = 1,
    tracking_uri: str | None = None,
    experiment: str = "kbench",
    ray_address: str | None = None,
    resume: bool = False,
    output_path: str | Path | None = None,
    verbose: bool = False,
) -> Results:
    """Pre-train (or load), fine-tune and evaluate ``model`` on ``tasks``, one Ray Tune trial per (model, seed).

    ``model`` is a zoo entry's name (``"kaleido"``, the default), several (a list, a comma-separated string or
    ``"all"``), ``"package.module:Class"``, a checkpoint (a ``save_pretrained`` directory or
    ``"runs:/<run_id>/model"``) or a model instance; the weights of a checkpoint or an instance are fine-tuned and
    evaluated without pre-training (``checkpoint=`` names one, of ``model`` or, without it, of the checkpoint's own
    entry). ``finetune=False`` scores the pre-trained heads alone. ``overrides`` are config keys
    (``{"pretrain.lr": 1e-4}`` or ``["pretrain.lr=1e-4"]``), applied after ``config_files``; ``seeds`` is a count
    (seeds 0..n-1) or the seeds themselves. ``output_path`` names a directory to write the results file into.
    ``verbose=True`` shows Ray's and the trials' output here (the CLI's ``--verbose``); by default it goes to the
    run's log file, named once on stderr.
    """
    set_verbose(verbose)
    if output_path is not None:
        output_dir(output_path)
    model, given = _given(model, checkpoint, tracking_uri)
    extra = [] if finetune else ["finetune=false"]
    overrides = [*override_strings(given), *override_strings(overrides), *extra]
    cfg, names = _resolve(model, profile, overrides, config_files, dataset, data_dir)
    task_names = parse_tasks(tasks if isinstance(tasks, str) else ",".join(tasks), cfg.runtime.include_paths)
    specs = model_specs(names, _seeds(seeds))
    results = _execute(cfg, specs, task_names, "run", tracking_uri, experiment, ray_address, resume)
    arguments = {"models": names, "tasks": task_names, "resume": resume}
    return _finish(results, arguments, profile, overrides, config_files, dataset, data_dir, seeds, output_path)


def ablate(
    block: str | Sequence[str] = "all",
    model: str = "kaleido",
    *,
    profile: str = "default",
    overrides: Overrides = (),
    config_files: Sequence[Path] = (),
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    seeds: int | Sequence[int] = 1,
    tracking_uri: str | None = None,
    experiment: str = "kbench",
    ray_address: str | None = None,
    output_path: str | Path | None = None,
    verbose: bool = False,
) -> Results:
    """The paper's Table 4 ablations (``kpg``, ``agm``, ``akpm`` or ``all``) of ``model``: every (variant, seed) is
    a trial through all five tasks; trials that already finished with the same config are not run again.
    ``output_path`` names a directory to write the results file into; ``verbose`` is as ``evaluate``'s."""
    set_verbose(verbose)
    if output_path is not None:
        output_dir(output_path)
    overrides = override_strings(overrides)
    cfg, names = _resolve(model, profile, overrides, config_files, dataset, data_dir)
    chosen = [b for spec in ([block] if isinstance(block, str) else block) for b in blocks(spec)]
    specs = ablation_specs(names[0], chosen, _seeds(seeds))
    tasks = parse_tasks("all", cfg.runtime.include_paths)
    results = _execute(cfg, specs, tasks, "ablate", tracking_uri, experiment, ray_address, True)
    results.blocks, results.model = tuple(dict.fromkeys(chosen)), names[0]
    arguments = {"model": names[0], "blocks": list(results.blocks), "tasks": tasks}
    return _finish(results, arguments, profile, overrides, config_files, dataset, data_dir, seeds, output_path)


def _finish(
    results: Results,
    arguments: dict[str, Any],
    profile: str,
    overrides: Sequence[str],
    config_files: Sequence[Path],
    dataset: str | None,
    data_dir: str | Path | None,
    seeds: int | Sequence[int],
    output_path: str | Path | None,
) -> Results:
    """Record the call's arguments on ``results``; log its results file on the parent run (where this call made one)
    and, given ``output_path``, write it there too."""
    results.invocation = {
        **arguments,
        "profile": profile,
        "overrides": list(overrides),
        "config_files": [str(f) for f in config_files],
        "dataset": dataset,
        "data_dir": None if data_dir is None else str(data_dir),
        "seeds": _seeds(seeds),
    }
    if results.parent_run_id is not None or output_path is not None:
        written = record(results.document(), results.tracking_uri, results.parent_run_id, output_path, results.stem())
        if written is not None:
            log.info("wrote %s", written)
    return results


def _given(
    model: str | Sequence[str] | Path | VLPreTrainedModel | None, checkpoint: str | Path | None, uri: str | None
) -> tuple[str | Sequence[str], dict[str, Any]]:
    """The zoo entry to evaluate and the overrides that point it at given weights: ``checkpoint``, a checkpoint
    passed as ``model``, or an instance (saved once into the cache); the checkpoint's own options come with it."""
    if isinstance(model, VLPreTrainedModel):
        checkpoint, model = save_instance(model), _zoo_name(type(model))
    elif isinstance(model, Path) or (isinstance(model, str) and (is_run_uri(model) or Path(model).is_dir())):
        checkpoint, model = model, None
    if checkpoint is None:
        return model or "kaleido", {}
    source, uri = str(checkpoint), tracking_uri(uri)
    model = model or model_of(source, uri)
    if not isinstance(model, str) or "," in model or model == "all":
        raise KbenchError(f"a checkpoint is of one model; got {model!r}")
    options = {f"models.{model}.{k}": v for k, v in own_options(source, model, uri).items()}
    return model, {"model.checkpoint": source, **options}


def _zoo_name(cls: type[VLPreTrainedModel]) -> str:
    """The registry's name of a model class, else its ``package.module:Class``."""
    for name in MODELS.names():
        with contextlib.suppress(KbenchError):
            if MODELS.get(name) is cls:
                return name
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve(
    model: str | Sequence[str],
    profile: str,
    overrides: Overrides,
    config_files: Sequence[Path],
    dataset: str | None,
    data_dir: str | Path | None,
) -> tuple[Config, list[str]]:
    """The resolved config and the zoo names of ``model``."""
    names = parse_models(model if isinstance(model, str) else ",".join(model))
    return resolve_config(profile, overrides, config_files, dataset=dataset, data_dir=data_dir), names


def _seeds(seeds: int | Sequence[int]) -> list[int]:
    chosen = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not chosen:
        raise KbenchError("seeds must be at least 1")
    return chosen


def _execute(
    cfg: Config,
    specs: list[TrialSpec],
    tasks: list[str],
    command: str,
    uri: str | None,
    experiment: str,
    ray_address: str | None,
    resume: bool,
) -> Results:
    uri = tracking_uri(uri)
    parent, run_ids = execute(
        cfg, specs, tasks, command=command, uri=uri, experiment=experiment, ray_address=ray_address, resume=resume
    )
    missing = [s.label for s in specs if s.label not in run_ids]
    if missing:
        raise KbenchError(f"{len(missing)} of {len(specs)} trials have no finished run: {', '.join(missing)}")
    return Results(cfg, uri, experiment, run_ids, parent)
