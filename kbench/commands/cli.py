"""The ``kbench`` command line: one handler per subcommand, which ``kbench --help`` lists.

Every subcommand is a function of its parsed options, so tests drive the same entry point as users.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

import kbench
from kbench.core import interrupts
from kbench.core.config import PROFILES, Config, override_strings, profile_description, resolve_config
from kbench.core.errors import KbenchError
from kbench.engine.spool import EXIT_STATUS as EXIT_SPOOLED
from kbench.engine.spool import Spooled

DESCRIPTION = (
    "Kaleido-BERT and its baselines on the Fashion-Gen tasks: pre-train, fine-tune and evaluate (run, ablate, tune), "
    "then read the results back from MLflow (table, compare, plot, ui, export)."
)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default after its help, unless the help says it already or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and _shown_default(action.default) and "(default" not in text:
            text += " (default: %(default)s)"
        return text


def _shown_default(value: object) -> bool:
    return not (value is None or value is False or value == [] or value == argparse.SUPPRESS)


class Parser(argparse.ArgumentParser):
    """argparse's parser with ``HelpFormatter``; its subcommands' parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="kbench", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"kbench {kbench.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="pre-train, fine-tune and evaluate models on tasks; print the main table")
    run.add_argument(
        "--model",
        help="zoo entries, comma-separated, all, or package.module:Class (default kaleido, or the checkpoint's)",
    )
    run.add_argument("--task", default="all", help="tasks (itr,tir,cr,sub,fc), comma-separated, or all")
    _add_config_args(run)
    _add_tracking_args(run)
    _add_trial_args(run)
    _add_limit_arg(run)
    _add_include_arg(run)
    _add_output_arg(run)
    run.add_argument("--resume", action="store_true", help="skip trials that already have a finished result")
    run.add_argument("--checkpoint", help="evaluate these weights, no pre-training: a directory or runs:/ID/model")
    run.add_argument(
        "--no-finetune", dest="finetune", action="store_false", default=None, help="score the pre-trained heads alone"
    )
    run.set_defaults(handler=cmd_run)

    ablate = sub.add_parser("ablate", help="run the paper's Table 4 ablations; print their tables")
    ablate.add_argument("block", help="kpg, agm, akpm or all")
    ablate.add_argument("--model", default="kaleido", help="the zoo entry whose options are ablated")
    _add_config_args(ablate)
    _add_tracking_args(ablate)
    _add_trial_args(ablate)
    _add_limit_arg(ablate)
    _add_include_arg(ablate)
    _add_output_arg(ablate)
    ablate.set_defaults(handler=cmd_ablate)

    tune = sub.add_parser("tune", help="search a task's fine-tuning recipe with ASHA on the dev split")
    tune.add_argument("--model", default="kaleido", help="the zoo entry whose fine-tuning is searched")
    tune.add_argument("--task", required=True, help="one task: itr, tir, cr, sub or fc")
    tune.add_argument("--samples", type=int, default=8, help="recipes sampled (default 8)")
    tune.add_argument(
        "--out", type=Path, help="config file for the best recipe (default results/tune/MODEL-TASK.yaml)"
    )
    _add_config_args(tune)
    _add_tracking_args(tune)
    tune.add_argument("--seed", type=int, default=0, help="seed of the pre-training, the fine-tuning and the search")
    _add_resource_args(tune)
    _add_limit_arg(tune)
    _add_include_arg(tune)
    _add_output_arg(tune)
    tune.set_defaults(handler=cmd_tune)

    table = sub.add_parser("table", help="rebuild the paper's tables from MLflow runs")
    which = table.add_mutually_exclusive_group(required=True)
    which.add_argument("--main", action="store_true", help="Tables 2 and 3 (retrieval; CR, SUB, FC)")
    which.add_argument("--ablation", metavar="BLOCK", help="one block of Table 4: kpg, agm or akpm")
    table.add_argument("--format", default="md", choices=("md", "latex", "csv", "html"), help="the table's format")
    table.add_argument("--profile", help="only runs of this profile (default: that of the newest run)")
    table.add_argument("--dataset", help="only runs on this dataset (default: that of the newest run)")
    table.add_argument("--limit", type=int, help="only runs limited to the first N products (default: full runs)")
    table.add_argument("--output", type=Path, help="also write the table to this file")
    table.add_argument(
        "--config-hash", metavar="KEY", help="the runs of this config key (a prefix will do) where a model has several"
    )
    table.add_argument(
        "--match",
        action="store_true",
        help="only runs whose config is what kbench run with these --profile, --dataset, --set, --config would use",
    )
    _add_override_args(
        table,
        "with --match: YAML overrides in the profile's layout, applied before --set",
        "with --match: a config key",
    )
    _add_tracking_args(table)
    table.set_defaults(handler=cmd_table)

    compare = sub.add_parser("compare", help="two runs or models metric by metric: paired intervals and p-values")
    compare.add_argument("a", metavar="RUN_A", help="a run id, or model[:variant] (its newest config's seeds)")
    compare.add_argument("b", metavar="RUN_B", help="a run id, or model[:variant]")
    compare.add_argument("--format", default="md", choices=("md", "csv"), help="the comparison's format")
    compare.add_argument("--profile", help="of model[:variant] runs (default: that of the newest run)")
    compare.add_argument("--dataset", help="of model[:variant] runs (default: that of the newest run)")
    compare.add_argument("--limit", type=int, help="model[:variant] runs limited to N products (default: full runs)")
    _add_tracking_args(compare)
    compare.set_defaults(handler=cmd_compare)

    plot = sub.add_parser("plot", help="figures of ablations and pre-training curves from MLflow runs")
    what = plot.add_mutually_exclusive_group(required=True)
    what.add_argument("--ablation", metavar="BLOCK", help="bars of a Table 4 block (kpg, agm, akpm or all)")
    what.add_argument("--curves", action="store_true", help="pre-training curves of each pretext task (Fig. 7)")
    plot.add_argument("--model", default="kaleido", help="the zoo entry whose runs are plotted")
    plot.add_argument(
        "--out", type=Path, default=Path("kbench-results"), help="directory for the figures (default: %(default)s)"
    )
    plot.add_argument(
        "--format", default="png", choices=("png", "pdf", "svg"), help="png to view, pdf or svg to print (vector)"
    )
    _add_tracking_args(plot)
    plot.set_defaults(handler=cmd_plot)

    ui = sub.add_parser("ui", help="serve the MLflow UI of the tracking store on 127.0.0.1")
    ui.add_argument("--port", type=int, default=5000, help="the port to serve on")
    ui.add_argument("--tracking-uri", help="the store to serve (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    ui.set_defaults(handler=cmd_ui)

    sync = sub.add_parser("sync", help="replay into the tracking store what runs spooled while it was unreachable")
    sync.add_argument("--tracking-uri", help="only what was spooled for this store (default: every spooled store)")
    sync.set_defaults(handler=cmd_sync)

    reproduce = sub.add_parser("reproduce", help="rerun the reference study and compare it with results/reference")
    mode = reproduce.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare with the reference (the default)")
    mode.add_argument("--update", action="store_true", help="rewrite the reference with this run's results")
    reproduce.set_defaults(handler=cmd_reproduce)

    export = sub.add_parser("export", help="a trial's pre-trained model as a save_pretrained directory and model card")
    export.add_argument("source", metavar="RUN_OR_DIR", help="a trial's run id, runs:/ID/model, or a checkpoint dir")
    export.add_argument("--out", type=Path, required=True, help="the directory to write (replaced if it exists)")
    _add_tracking_args(export)
    export.set_defaults(handler=cmd_export)

    from kbench.commands.cache import KINDS as CACHE_KINDS

    cache = sub.add_parser("cache", help="check the caches under KBENCH_HOME against their checksums, or remove them")
    cache.add_argument("action", choices=("verify", "clear"), help="verify: list damaged entries; clear: remove")
    cache.add_argument("what", nargs="?", default="all", choices=("all", *CACHE_KINDS), help="which caches")
    cache.set_defaults(handler=cmd_cache)

    ls = sub.add_parser("ls", help="list registered models, tasks, datasets, protocols, encoders or profiles")
    ls.add_argument(
        "what", choices=("models", "tasks", "datasets", "protocols", "encoders", "profiles"), help="what to list"
    )
    ls.set_defaults(handler=cmd_ls)

    config = sub.add_parser(
        "config", help="check a config as kbench run does; print it resolved, and the hash its trials are tagged with"
    )
    config.add_argument("--model", default="kaleido", help="zoo entries whose options and hashes are printed, or all")
    config.add_argument("--task", default="all", help="tasks whose cards are printed, comma-separated, or all")
    config.add_argument("--seed", type=int, default=0, help="the seed of the trial hash printed")
    _add_config_args(config)
    _add_include_arg(config)
    config.set_defaults(handler=cmd_config)

    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_sub.add_parser("synth", help="write SynthFashion in the Fashion-Gen layout to a directory")
    synth.add_argument("--out", type=Path, required=True, help="directory to write the two HDF5 files into")
    _add_config_args(synth, dataset=False)
    synth.set_defaults(handler=cmd_data_synth)

    bench = sub.add_parser("bench", help="time feature extraction, pre-training steps and retrieval scoring")
    _add_config_args(bench, profile=None)
    bench.add_argument("--model", default="kaleido", help="the zoo entry whose pre-training steps are timed")
    bench.add_argument("--out", type=Path, help="JSON file to write (default results/bench.json, bench-scale.json)")
    bench.add_argument(
        "--scale",
        type=int,
        metavar="ROWS",
        help="measure the data path instead, on a store of ROWS rows at the paper profile's shapes (no CNN)",
    )
    bench.add_argument("--dir", type=Path, help="where --scale writes its store (default: KBENCH_HOME/bench)")
    bench.add_argument("--keep", action="store_true", help="keep the --scale store instead of removing it")
    bench.set_defaults(handler=cmd_bench)
    return parser


def _add_config_args(parser: argparse.ArgumentParser, dataset: bool = True, profile: str | None = "default") -> None:
    parser.add_argument("--profile", default=profile, help=f"one of {', '.join(PROFILES)}")
    if dataset:
        parser.add_argument("--dataset", help="synth (default) or fashiongen")
        parser.add_argument("--data-dir", help="directory holding fashiongen_256_256_{train,validation}.h5")
    _add_override_args(
        parser,
        "YAML overrides in the profile's layout (e.g. what kbench tune wrote), applied before --set",
        "override a config key",
    )


def _add_override_args(parser: argparse.ArgumentParser, config_help: str, set_help: str) -> None:
    """``--config FILE`` and ``--set KEY=VALUE``, each repeatable, into ``config_files`` and ``overrides``."""
    parser.add_argument(
        "--config", dest="config_files", type=Path, action="append", default=[], metavar="FILE", help=config_help
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)


def _add_trial_args(parser: argparse.ArgumentParser) -> None:
    """Which seeds run, where, and with what resources."""
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds, from --seed on")
    _add_resource_args(parser)


def _add_include_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--include-path",
        action="append",
        metavar="DIR",
        help="also register the task cards (*.yaml) in DIR; repeatable; run them by name (--task itr,mytask)",
    )


def _add_output_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-path",
        type=Path,
        metavar="DIR",
        help="also write a results file (JSON: config, versions, hashes, metrics, run ids) into DIR; "
        "see docs/results-file.md",
    )


def _add_limit_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit",
        type=int,
        help="only the first N products of each split, to try a profile quickly (runs are tagged, tabulated apart)",
    )


def _add_resource_args(parser: argparse.ArgumentParser) -> None:
    """Where trials run, with what resources, and where their output goes."""
    parser.add_argument("--verbose", action="store_true", help="Ray's and the trials' output here, not in a log file")
    parser.add_argument("--ray-address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--cpus-per-trial", type=int, help="CPUs each trial reserves (default: the profile's)")
    parser.add_argument("--gpus-per-trial", type=float, help="GPUs each trial reserves (default: the profile's)")
    parser.add_argument("--retries", type=int, help="times a failed trial is restarted (default: the profile's)")
    parser.add_argument(
        "--pretrain-workers", type=int, help="data-parallel pre-training workers per trial (Ray Train, DDP)"
    )


def _add_tracking_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--experiment", default="kbench", help="MLflow experiment name")


# Flags that are shorthands for config keys.
FLAG_KEYS = {
    "cpus_per_trial": "runtime.cpus_per_trial",
    "gpus_per_trial": "runtime.gpus_per_trial",
    "retries": "runtime.retries",
    "pretrain_workers": "pretrain.workers",
    "limit": "data.limit",
    "include_path": "runtime.include_paths",
}


def _overrides(opts: argparse.Namespace) -> list[str]:
    """``--set`` overrides, then those of the flags that are shorthands for config keys."""
    flags = {key: getattr(opts, flag, None) for flag, key in FLAG_KEYS.items()}
    return [*opts.overrides, *override_strings({key: value for key, value in flags.items() if value is not None})]


def config_of(opts: argparse.Namespace) -> Config:
    """The config the options name: the profile with ``--dataset``, ``--data-dir``, ``--config``, ``--set`` and the
    flags that are shorthands for config keys applied."""
    return resolve_config(
        opts.profile,
        _overrides(opts),
        opts.config_files,
        dataset=getattr(opts, "dataset", None),
        data_dir=getattr(opts, "data_dir", None),
    )


def _seeds(opts: argparse.Namespace) -> list[int]:
    """``--seeds`` consecutive seeds from ``--seed`` on."""
    if opts.seeds < 1:
        raise KbenchError("--seeds must be at least 1")
    return list(range(opts.seed, opts.seed + opts.seeds))


def _common(opts: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments ``kbench.evaluate`` and ``kbench.ablate`` take from the shared options."""
    return {
        "profile": opts.profile,
        "overrides": _overrides(opts),
        "config_files": opts.config_files,
        "dataset": opts.dataset,
        "data_dir": opts.data_dir,
        "seeds": _seeds(opts),
        "tracking_uri": opts.tracking_uri,
        "experiment": opts.experiment,
        "ray_address": opts.ray_address,
        "output_path": opts.output_path,
        "verbose": opts.verbose,
    }


def _precheck(opts: argparse.Namespace, models: str, tasks: str | None) -> None:
    """What can be refused before the first line and the heavy imports: the config's keys and values, the model and
    task names (``check_config`` then checks each model's options with its own config class)."""
    from kbench.core.catalog import check_model_names
    from kbench.tasks import parse_tasks

    cfg = config_of(opts)
    check_model_names(models)
    if tasks is not None:
        parse_tasks(tasks, cfg.runtime.include_paths)
    if hasattr(opts, "seeds"):
        _seeds(opts)


def cmd_run(opts: argparse.Namespace) -> int:
    from kbench.core.progress import begin

    _precheck(opts, opts.model or "kaleido", opts.task)
    begin(f"{opts.model or 'kaleido'} on {opts.task}", opts.profile, opts.seeds, opts.verbose)
    from kbench.api import evaluate

    given = {"checkpoint": opts.checkpoint, "finetune": opts.finetune is not False}
    print(evaluate(opts.model, opts.task, resume=opts.resume, **given, **_common(opts)).table())
    return 0


def cmd_tune(opts: argparse.Namespace) -> int:
    from kbench.core.progress import begin

    _precheck(opts, opts.model, opts.task)
    begin(f"tune {opts.model} on {opts.task}, {opts.samples} samples", opts.profile, 1, opts.verbose)
    from kbench.core.tracking_store import tracking_uri
    from kbench.engine.tuning import tune_recipe
    from kbench.report.results_file import output_dir, save_tune

    if opts.output_path:
        output_dir(opts.output_path)
    cfg, uri = config_of(opts), tracking_uri(opts.tracking_uri)
    tuned = tune_recipe(
        cfg,
        opts.model,
        opts.task,
        opts.samples,
        seed=opts.seed,
        out=opts.out,
        uri=uri,
        experiment=opts.experiment,
        ray_address=opts.ray_address,
    )
    print(tuned.report)
    invocation = {"model": opts.model, "task": opts.task, "samples": opts.samples, "seeds": [opts.seed]}
    invocation |= {"profile": opts.profile, "overrides": _overrides(opts), "dataset": opts.dataset}
    invocation |= {"config_files": [str(f) for f in opts.config_files], "data_dir": opts.data_dir}
    written = save_tune(opts.output_path, invocation, cfg, uri, opts.experiment, tuned.parent_run_id)
    if written is not None:
        print(written)
    return 0


def cmd_ablate(opts: argparse.Namespace) -> int:
    from kbench.core.progress import begin

    _precheck(opts, opts.model, None)
    begin(f"ablate {opts.block} of {opts.model}", opts.profile, opts.seeds, opts.verbose)
    from kbench.api import ablate

    print(ablate(opts.block, opts.model, **_common(opts)).table())
    return 0


def cmd_table(opts: argparse.Namespace) -> int:
    from kbench.core.tracking_store import tracking_uri
    from kbench.report.tables import build_ablation, build_main

    uri = tracking_uri(opts.tracking_uri)
    if (opts.overrides or opts.config_files) and not opts.match:
        raise KbenchError("--set and --config choose the runs of --match; add --match")
    match = None
    if opts.match:
        opts.profile = opts.profile or "default"  # as kbench run's
        match = config_of(opts)
    selection = {"limit": opts.limit, "config_hash": opts.config_hash, "match": match}
    if opts.ablation:
        text = build_ablation(
            uri, opts.experiment, opts.ablation, opts.format, opts.profile, opts.dataset, **selection
        )
    else:
        text = build_main(uri, opts.experiment, opts.format, opts.profile, opts.dataset, **selection)
    if opts.output:
        from kbench.core.paths import atomic_path

        with atomic_path(opts.output) as tmp:
            tmp.write_text(text)
    print(text, end="")
    return 0


def cmd_compare(opts: argparse.Namespace) -> int:
    from kbench.core.tracking_store import tracking_uri
    from kbench.report.compare import compare_runs

    uri = tracking_uri(opts.tracking_uri)
    print(
        compare_runs(uri, opts.experiment, opts.a, opts.b, opts.format, opts.profile, opts.dataset, opts.limit), end=""
    )
    return 0


def cmd_plot(opts: argparse.Namespace) -> int:
    from kbench.core.tracking_store import tracking_uri
    from kbench.report.plots import plot_ablation, plot_curves

    uri = tracking_uri(opts.tracking_uri)
    if opts.curves:
        plots = plot_curves(uri, opts.experiment, opts.out, opts.model, opts.format)
    else:
        plots = plot_ablation(uri, opts.experiment, opts.ablation, opts.out, opts.model, opts.format)
    for plot in plots:
        print(plot.path)
        if plot.note:
            print(plot.note, file=sys.stderr)
    return 0


def cmd_ui(opts: argparse.Namespace) -> int:
    from kbench.commands.ui import serve
    from kbench.core.tracking_store import tracking_uri

    return serve(tracking_uri(opts.tracking_uri), opts.port)


def cmd_reproduce(opts: argparse.Namespace) -> int:
    from kbench.commands.reproduce import reproduce

    status, report = reproduce(opts.update)
    print(report)
    return status


def cmd_sync(opts: argparse.Namespace) -> int:
    from kbench.core.tracking_store import tracking_uri
    from kbench.engine.replay import sync

    print(sync(tracking_uri(opts.tracking_uri) if opts.tracking_uri else None)[1])
    return 0


def cmd_export(opts: argparse.Namespace) -> int:
    from kbench.core.tracking_store import tracking_uri
    from kbench.report.export import export

    print(export(opts.source, opts.out, tracking_uri(opts.tracking_uri)))
    return 0


def cmd_cache(opts: argparse.Namespace) -> int:
    from kbench.commands.cache import clear, verify

    if opts.action == "clear":
        print(clear(opts.what))
        return 0
    status, report = verify(opts.what)
    print(report)
    return status


def cmd_ls(opts: argparse.Namespace) -> int:
    from kbench.core.catalog import descriptions, encoder_listing, model_listing

    if opts.what == "profiles":
        listing = {name: profile_description(name) for name in PROFILES}
    elif opts.what == "models":
        listing = model_listing()  # from the catalog: no torch for a listing
    elif opts.what == "encoders":
        listing = encoder_listing()
    else:
        listing = descriptions(_registry(opts.what))
    width = max(len(name) for name in listing)
    for name, description in listing.items():
        print(f"{name:<{width}}  {description}")
    return 0


def _registry(what: str):
    if what == "tasks":
        from kbench.tasks import TASKS

        return TASKS
    if what == "datasets":
        from kbench.data import DATASETS

        return DATASETS
    from kbench.tasks.protocols import PROTOCOLS

    return PROTOCOLS


def cmd_config(opts: argparse.Namespace) -> int:
    """Check the config as ``kbench run`` would, then print it with each model's options in full, each task's card
    as the profile resolves it, and each trial's ``kbench.config_hash``."""
    from kbench.engine.runner import check_config, parse_models
    from kbench.engine.trial import TrialSpec, config_hash, resolved_options
    from kbench.tasks import build_task, parse_tasks

    cfg = config_of(opts)
    specs = [TrialSpec(model, opts.seed) for model in parse_models(opts.model)]
    tasks = parse_tasks(opts.task, cfg.runtime.include_paths)
    check_config(cfg, specs, tasks)
    shown = cfg.to_dict()
    shown["models"] = {s.model: resolved_options(cfg, s.model) for s in specs}
    shown["tasks"] = {name: _task_fields(build_task(name, cfg.tasks.get(name, {}))) for name in tasks}
    print(yaml.safe_dump(json.loads(json.dumps(shown, default=str)), sort_keys=False), end="")
    for spec in specs:
        print(f"# kbench.config_hash of {spec.model}, seed {spec.seed}: {config_hash(cfg, spec)}")
    return 0


def _task_fields(task: Any) -> dict[str, Any]:
    """A task's card as a trial reads it: version, kind, metrics, the fine-tuning recipe and the kind's options."""
    card = task.card
    head = {"version": card.version, "kind": card.kind, "primary_metric": card.primary_metric}
    return {**head, "finetune": dataclasses.asdict(task.recipe), **dataclasses.asdict(task.options)}


def cmd_data_synth(opts: argparse.Namespace) -> int:
    from kbench.data.synth import generate

    cfg = config_of(opts)
    generate(opts.out, cfg.data.synth)
    print(f"wrote SynthFashion to {opts.out}")
    return 0


def cmd_bench(opts: argparse.Namespace) -> int:
    if opts.scale is not None:
        from kbench.commands.scale import run_scale_bench
        from kbench.core.paths import cache_dir

        opts.profile = opts.profile or "paper"
        out = opts.out or Path("results/bench-scale.json")
        print(run_scale_bench(config_of(opts), opts.scale, opts.dir or cache_dir("bench"), opts.keep, out))
        return 0
    from kbench.commands.bench import run_bench

    opts.profile = opts.profile or "default"
    print(run_bench(config_of(opts), opts.model, opts.out or Path("results/bench.json")))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; user errors print one line and return 2; SIGINT, SIGTERM and SIGHUP
    stop the trials, mark the runs KILLED and return 128 + the signal's number, with one line and no results."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # in case it already was
    interrupts.install()
    opts = build_parser().parse_args(argv)
    try:
        return opts.handler(opts)
    except Spooled as exc:  # results whole but kept locally: a status of their own
        print(f"kbench: {exc}", file=sys.stderr)
        return EXIT_SPOOLED
    except KbenchError as exc:
        print(f"kbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        stop = exc if isinstance(exc, interrupts.Interrupted) else interrupts.Interrupted()
        stopped = "" if stop.stopped is None else f"; {stop.stopped} trial{'' if stop.stopped == 1 else 's'} stopped"
        rerun = {"run": "; rerun with --resume to continue", "ablate": "; rerun to continue"}.get(opts.command, "")
        print(f"kbench: interrupted ({signal.Signals(stop.signum).name}){stopped}{rerun}", file=sys.stderr)
        return stop.exit_status
