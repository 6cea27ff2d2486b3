"""Checks on the driver before Ray starts, beyond the config's declared bounds: the task recipes' and options'
bounds, the ``models.<name>`` sections, the data a trial could not cut into patches, and the resources trials ask
for against those they can get. Each refuses in one line (KbenchError), where a trial would fail with a traceback,
wait for resources forever, or silently run something else."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import h5py

from kbench.core.bounds import check_bounds
from kbench.core.config import Config, load_config
from kbench.core.errors import KbenchError
from kbench.data import DatasetSplits
from kbench.data.layout import IMAGE_KEY
from kbench.engine.trial import TrialSpec, model_options, trial_config
from kbench.models.zoo import MODELS
from kbench.tasks import Task


def check_task_bounds(task: Task) -> None:
    """A task's fine-tuning recipe and options (its card with the ``tasks.<name>`` overrides) within their bounds."""
    check_bounds(task.recipe, f"tasks.{task.name}.finetune")
    check_bounds(task.options, f"tasks.{task.name}")


def check_model_sections(cfg: Config, specs: Sequence[TrialSpec]) -> None:
    """Every ``models.<name>`` section names a zoo entry: one that is not in this run is allowed (a config file may
    serve several models), one that does not exist is refused rather than silently dropped."""
    running = {spec.model for spec in specs}
    for name in cfg.models:
        if name not in running and name not in MODELS.names():
            raise KbenchError(f"models.{name}: no such zoo entry (zoo: {', '.join(MODELS.names())})")


def check_gpu_settings(cfg: Config) -> None:
    """GPU settings that no Ray cluster can meet: a fraction of more than one GPU, CUDA without GPUs."""
    runtime = cfg.runtime
    if runtime.gpus_per_trial > 1 and not runtime.gpus_per_trial.is_integer():
        raise KbenchError(f"runtime.gpus_per_trial above 1 must be whole GPUs, got {runtime.gpus_per_trial:g}")
    if runtime.device == "cuda" and runtime.gpus_per_trial == 0:
        raise KbenchError("runtime.device=cuda needs runtime.gpus_per_trial > 0 (--gpus-per-trial 1)")


def check_data(dataset: DatasetSplits, cfg: Config, specs: Sequence[TrialSpec]) -> None:
    """Train and test splits with images, large enough for the finest patch grid of every trial's model."""
    for split in (dataset.train, dataset.test):
        if len(split) == 0:
            limit = f" (--limit {cfg.data.limit})" if cfg.data.limit else ""
            raise KbenchError(f"the {split.name} split of {split.path} has no images with a description{limit}")
    grids = {}
    for spec in specs:
        variant = trial_config(cfg, spec)
        model_cls = MODELS.get(spec.model)
        scheme = model_cls.patching(model_cls.config_class(**model_options(variant, spec.model))).scheme
        grids[max(scheme.levels)] = f"{spec.model}'s {scheme.name}"
    finest = max(grids)
    for split in (dataset.train, dataset.test):
        with h5py.File(split.path, "r") as f:
            height, width = f[IMAGE_KEY].shape[1:3]
        if min(height, width) < finest:
            raise KbenchError(
                f"{split.path}: images of {height}x{width} pixels are too small for {grids[finest]} patches, "
                f"a {finest}x{finest} grid (at least {finest}x{finest} pixels)"
            )


def check_local_resources(cfg: Config, gpus: int) -> None:
    """What a trial asks of a local Ray, against this machine's ``gpus``. A GPU request the profile makes is let
    through on a machine without any (its trials run on the CPU, with a warning); one the user made is refused."""
    asked, device = trial_gpus(cfg), cfg.runtime.device
    if gpus == 0 and device == "cuda":
        raise KbenchError("runtime.device=cuda but this machine has no GPU (torch sees none); use auto or cpu")
    if gpus == 0 and asked > 0 and cfg.runtime.gpus_per_trial == load_config(cfg.profile).runtime.gpus_per_trial:
        return
    if asked > gpus:
        raise KbenchError(
            f"a trial asks for {asked:g} GPU{'s' if asked != 1 else ''} ({gpu_request(cfg)}) but this machine has "
            f"{gpus}; Ray would wait for them forever (--gpus-per-trial {min(gpus, 1)})"
        )


def check_cluster_resources(cfg: Config, nodes: Sequence[Mapping[str, float]]) -> None:
    """What a trial asks of a Ray cluster, against the resources of each of its alive ``nodes``: a trial's own
    reservation and each pre-training worker's must fit on one node (the cluster's totals can hold a trial that no
    node can, and Ray would wait for that node forever), and all of them together in the cluster."""
    runtime, workers = cfg.runtime, cfg.pretrain.workers
    trial = {"CPU": float(runtime.cpus_per_trial), "GPU": runtime.gpus_per_trial}
    _check_node_fit(nodes, "a trial", trial, {k: f"runtime.{k.lower()}s_per_trial" for k in trial})
    if workers > 1:
        worker = {"CPU": float(runtime.cpus_per_worker), "GPU": 1.0 if runtime.gpus_per_trial > 0 else 0.0}
        settings = {"CPU": "runtime.cpus_per_worker", "GPU": "runtime.gpus_per_trial"}
        _check_node_fit(nodes, f"each of a trial's {workers} pre-training workers", worker, settings)
    asked_gpus, asked_cpus = trial_gpus(cfg), trial_cpus(cfg)
    have_gpus, have_cpus = (sum(node.get(kind, 0) for node in nodes) for kind in ("GPU", "CPU"))
    if asked_gpus > have_gpus:
        raise KbenchError(
            f"the Ray cluster has {have_gpus:g} GPUs but a trial asks for {asked_gpus:g} ({gpu_request(cfg)}); "
            "add GPU nodes or run with --gpus-per-trial 0"
        )
    if asked_cpus > have_cpus:
        raise KbenchError(
            f"the Ray cluster has {have_cpus:g} CPUs but a trial asks for {asked_cpus} (runtime.cpus_per_trial, and "
            "runtime.cpus_per_worker for each pre-training worker); lower --cpus-per-trial"
        )


def _check_node_fit(
    nodes: Sequence[Mapping[str, float]], who: str, asked: Mapping[str, float], settings: Mapping[str, str]
) -> None:
    """One line when no node has all the resources ``who`` reserves (``asked``, by kind): the most one node has,
    and the setting (``settings``, by kind) to lower."""
    if any(all(node.get(kind, 0) >= n for kind, n in asked.items()) for node in nodes):
        return
    cluster = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}"
    for kind, n in asked.items():
        most = max((node.get(kind, 0) for node in nodes), default=0)
        if n > most:
            total = sum(node.get(kind, 0) for node in nodes)
            raise KbenchError(
                f"{who} asks for {_count(n, kind)} on one node ({settings[kind]}={n:g}) but no node of the Ray "
                f"cluster has more than {most:g} ({cluster}, {_count(total, kind)} in all); lower it or add a larger "
                "node"
            )
    wanted = " and ".join(_count(n, kind) for kind, n in asked.items())
    raise KbenchError(
        f"{who} asks for {wanted} on one node but no node of the Ray cluster ({cluster}) has them all; lower "
        f"{' or '.join(settings.values())} or add a larger node"
    )


def _count(n: float, kind: str) -> str:
    return f"{n:g} {kind}{'' if n == 1 else 's'}"


def trial_gpus(cfg: Config) -> float:
    """GPUs one trial holds at its peak: its own, and one for each data-parallel pre-training worker."""
    runtime, workers = cfg.runtime, cfg.pretrain.workers
    return runtime.gpus_per_trial + (workers if workers > 1 and runtime.gpus_per_trial > 0 else 0)


def trial_cpus(cfg: Config) -> int:
    """CPUs one trial needs at its peak: a data-parallel trial keeps its own (for fine-tuning) while its
    pre-training workers hold theirs."""
    runtime, workers = cfg.runtime, cfg.pretrain.workers
    return runtime.cpus_per_trial + (runtime.cpus_per_worker * workers if workers > 1 else 0)


def gpu_request(cfg: Config) -> str:
    """The settings a trial's GPU count comes from, as ``runtime.gpus_per_trial=1, pretrain.workers=2``."""
    workers = f", pretrain.workers={cfg.pretrain.workers}" if cfg.pretrain.workers > 1 else ""
    return f"runtime.gpus_per_trial={cfg.runtime.gpus_per_trial:g}{workers}"


def check_resources(cfg: Config, ray_address: str | None) -> None:
    """Before Ray starts: a local Ray's trials against this machine's GPUs (a cluster's are checked once joined)."""
    if not (ray_address or os.environ.get("RAY_ADDRESS")):
        import torch

        check_local_resources(cfg, torch.cuda.device_count())
