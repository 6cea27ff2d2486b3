"""Typed configuration: dataclass defaults are the embedded ``default`` profile, YAML profiles override them.

A resolved config is plain data (``to_dict``) and hashed (``digest``); the hashes of its parts name caches
and checkpoints, so two runs share a stage exactly when the settings that stage depends on agree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kbench.core.bounds import bounded, check_bounds
from kbench.core.errors import KbenchError, did_you_mean, unknown_choice

PROFILES = ("smoke", "default", "paper")
IMAGES, PAIRS = "images", "pairs"  # what a pre-training epoch counts (pretrain.epoch_unit)
EPOCH_UNITS = (IMAGES, PAIRS)
PAIRS_NEGATIVE_RATE = 0.5  # an epoch of pairs shows every image once matched and once mismatched
DEVICES = ("auto", "cpu", "cuda")  # runtime.device; auto picks CUDA when present
PRECISIONS = ("fp32", "bf16")  # runtime.precision


@dataclass
class SynthConfig:
    """Size and seed of the generated SynthFashion dataset."""

    products_train: int = bounded(2000, low=1)
    products_test: int = bounded(1000, low=1)
    max_poses: int = bounded(3, low=1)
    seed: int = bounded(0, low=0)


@dataclass
class DataConfig:
    """Which dataset to read and how its text is tokenised."""

    dataset: str = "synth"
    data_dir: str | None = None
    tokenizer: str = "bundled"  # "bundled" (bert-base-uncased WordPiece, offline) or a hub name / path
    max_text_len: int = bounded(40, low=3)  # [CLS], a word, [SEP]
    dev_fraction: float = bounded(0.05, low=0, high=1, high_open=True)
    dev_seed: int = bounded(0, low=0)
    # Only the first N products of each split (--limit), to try a profile quickly.
    limit: int | None = bounded(None, low=1)
    synth: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class FeatureConfig:
    """The frozen patch encoder and how crops are fed to it."""

    encoder: str = "small-cnn"
    weights: str | None = None  # a torchvision-layout state dict for resnet50; "random" to try the code path
    crop_size: int = bounded(32, low=1)
    batch_size: int = bounded(64, low=1)  # images per extraction batch
    # Images per store shard, the unit of atomic commit, resumption and parallel extraction.
    shard_rows: int = bounded(1024, low=1)
    # Extraction tasks run at once (Ray; trial-sized: its CPUs and, where trials have them, a GPU).
    workers: int = bounded(1, low=1)


@dataclass
class ModelConfig:
    """Transformer size shared by every zoo entry; ``init_from`` names a BERT checkpoint to start from.

    The defaults are the CPU-sized default profile: without dropout, so that cross-modal matching leaves
    its initial plateau within the few thousand steps a CPU affords (BERT's 0.1 is set by ``paper``).
    """

    hidden_size: int = bounded(128, low=1)
    num_hidden_layers: int = bounded(2, low=1)
    num_attention_heads: int = bounded(4, low=1)
    intermediate_size: int = bounded(512, low=1)
    hidden_dropout_prob: float = bounded(0.0, low=0, high=1, high_open=True)
    attention_probs_dropout_prob: float = bounded(0.0, low=0, high=1, high_open=True)
    init_from: str | None = None
    checkpoint: str | None = None  # evaluate these weights instead of pre-training: a directory or runs:/<id>/model


@dataclass
class OptimConfig:
    """One optimisation recipe: AdamW, linear warm-up then linear decay, global-norm clipping.

    Adam's moments default to PyTorch's (0.9, 0.999, 1e-8), which the CPU profiles were tuned with; the ``paper``
    profile sets the released code's ``adam_beta2=0.98``, ``adam_epsilon=1e-6``. ``weight_decay`` is decoupled
    (AdamW) and spares biases and LayerNorms; 0 is the released code's plain Adam.
    """

    epochs: float = bounded(1.0, low=0, low_open=True, note="finetune=false (--no-finetune) skips fine-tuning")
    batch_size: int = bounded(32, low=1)
    lr: float = bounded(1e-4, low=0, low_open=True)
    weight_decay: float = bounded(0.01, low=0)
    warmup: float = bounded(0.1, low=0)  # a fraction of the steps when < 1, else a number of steps
    clip_norm: float = bounded(1.0, low=0)  # 0: no clipping
    max_steps: int | None = bounded(None, low=1)
    adam_beta1: float = bounded(0.9, low=0, high=1, high_open=True)
    adam_beta2: float = bounded(0.999, low=0, high=1, high_open=True)
    adam_epsilon: float = bounded(1e-8, low=0, low_open=True)


@dataclass
class PretrainConfig(OptimConfig):
    """The pre-training recipe; the objectives themselves are options of each zoo entry.

    ``epoch_unit`` says what an epoch is: ``images``, one pass over the training images, each with its own text or,
    at ``itm_negative_rate``, a mismatched one; ``pairs``, the released code's count, each image twice, once with
    its own text and once with a mismatched one (twice the steps; the rate is then 1:1 by construction).
    ``init_mlm_head`` also loads the MLM head (``cls.predictions``: transform and decoder bias) from the
    ``model.init_from`` checkpoint where it has one; the decoder weight is always the tied word embeddings.
    """

    epochs: float = bounded(25.0, low=0, low_open=True)
    lr: float = bounded(1e-3, low=0, low_open=True)
    warmup: float = bounded(0.05, low=0)
    itm_negative_rate: float = bounded(0.5, low=0, high=1)
    epoch_unit: str = bounded(IMAGES, choices=EPOCH_UNITS)
    init_mlm_head: bool = True
    workers: int = bounded(1, low=1)  # data-parallel workers (Ray Train, DDP); each takes an equal slice of a batch
    # Steps between the training states a killed pre-training resumes from (0: never).
    save_every: int = bounded(500, low=0)


@dataclass
class RuntimeConfig:
    """Where and how trials run. The scheduling fields (``SCHEDULING``) do not change results and are left out
    of the config hash, so a trial resumes whatever resources it is given."""

    device: str = bounded("auto", choices=DEVICES)
    precision: str = bounded("fp32", choices=PRECISIONS)  # bf16: autocast on CUDA and on CPUs with bf16 arithmetic
    cpus_per_trial: int = bounded(2, low=1)
    gpus_per_trial: float = bounded(0.0, low=0)
    # Of each data-parallel pre-training worker; each also takes a GPU when trials do.
    cpus_per_worker: int = bounded(1, low=1)
    retries: int = bounded(1, low=0)  # times Ray Tune restarts a failed trial
    eval_batch_size: int = bounded(128, low=1)
    # Processes building batches ahead of the step; 0 builds them in the training loop's thread, which is faster on a
    # CPU, whose cores the step's kernels already use (a worker cost 7 % of a default-profile step on 2 cores).
    loader_workers: int = bounded(0, low=0)
    # Directories of the user's task cards (--include-path), registered beside the shipped ones in the driver and in
    # every trial's process; absolute once resolved. Which cards exist changes no result: each card is versioned.
    include_paths: list[str] = field(default_factory=list)


# Settings that change where and how fast work runs, never its results: left out of every hash.
SCHEDULING = (
    "runtime.cpus_per_trial",
    "runtime.gpus_per_trial",
    "runtime.cpus_per_worker",
    "runtime.retries",
    "runtime.loader_workers",
    "runtime.include_paths",
    "features.workers",
    "pretrain.save_every",
)


@dataclass
class Config:
    """Everything a run depends on, apart from the model name and the seed."""

    profile: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-model options, e.g. models.fashionbert
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-task overrides of the task cards
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    finetune: bool = True  # false scores the pre-trained heads alone (no fine-tuning; CR and SUB are skipped)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def results_dict(self) -> dict[str, Any]:
        """``to_dict`` without the scheduling fields: what results depend on. ``model.checkpoint`` and ``finetune``
        appear only when set, so that the hashes of runs from before they existed stay as they were."""
        data = without_scheduling(self.to_dict())
        if data["model"]["checkpoint"] is None:
            del data["model"]["checkpoint"]
        if data["finetune"]:
            del data["finetune"]
        return data


def without_scheduling(data: dict[str, Any], section: str = "") -> dict[str, Any]:
    """``data`` (a config dict, or its ``section``) without the ``SCHEDULING`` keys."""
    prefix = f"{section}." if section else ""
    out = {}
    for key, value in data.items():
        if f"{prefix}{key}" in SCHEDULING:
            continue
        out[key] = without_scheduling(value, f"{prefix}{key}") if isinstance(value, dict) else value
    return out


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def profile_description(profile: str) -> str:
    """The first sentence of the comment a profile's YAML file opens with, however many lines it spans."""
    lines = itertools.takewhile(lambda line: line.startswith("#"), _profile_text(profile).splitlines())
    comment = " ".join(line.lstrip("# ").strip() for line in lines)
    return re.split(r"(?<=\.)\s", comment, maxsplit=1)[0]


def _profile_text(profile: str) -> str:
    if profile not in PROFILES:
        raise unknown_choice("profile", profile, PROFILES)
    return resources.files("kbench").joinpath("profiles", f"{profile}.yaml").read_text()


def load_config(
    profile: str = "default", overrides: list[str] | tuple[str, ...] = (), files: list[Path] | tuple[Path, ...] = ()
) -> Config:
    """The named profile, with the override ``files`` (YAML in the profile's layout, such as the ones ``kbench
    tune`` writes) merged onto it in order, then the ``--set key=value`` overrides applied."""
    data = yaml.safe_load(_profile_text(profile)) or {}
    for path in files:
        data = _merge(data, read_override_file(path))
    where = f"profile {profile}" + "".join(f" + {path}" for path in files)
    cfg = build_section(Config, data, where)
    cfg.profile = profile
    for item in overrides:
        apply_override(cfg, item)
    if cfg.data.limit is not None and cfg.data.limit < 1:
        raise KbenchError(f"--limit must be at least 1 product, got {cfg.data.limit}")
    check_bounds(cfg, "")
    check_epoch_unit(cfg.pretrain)
    absolute_paths(cfg)
    return cfg


def absolute_paths(cfg: Config) -> None:
    """Make the config's relative paths absolute, against the working directory, in place: trials run in Ray's
    worker directories, where a relative path names another file or none. Names that are not paths (``bundled``,
    ``random``, ``none``, a hub name, ``runs:/<id>/model``) stay as they are."""
    data, model = cfg.data, cfg.model
    data.data_dir = _absolute(data.data_dir)
    if data.tokenizer != "bundled" and _is_path(data.tokenizer):
        data.tokenizer = _absolute(data.tokenizer)
    if cfg.features.weights not in (None, "random"):
        cfg.features.weights = _absolute(cfg.features.weights)
    if model.init_from not in (None, "none") and _is_path(model.init_from):
        model.init_from = _absolute(model.init_from)
    if model.checkpoint and not _URI_SCHEME.match(model.checkpoint):
        model.checkpoint = _absolute(model.checkpoint)
    cfg.runtime.include_paths = [str(Path(p).expanduser().resolve()) for p in cfg.runtime.include_paths]


_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def _is_path(value: str) -> bool:
    """Whether a name that may also be a hub name is a local path: spelled as one, or existing."""
    return value.startswith(("/", ".", "~")) or Path(value).expanduser().exists()


def _absolute(value: str | None) -> str | None:
    """``value`` with ``~`` expanded and, when relative, the working directory before it; absolute paths as given."""
    if value is None:
        return None
    path = os.path.expanduser(value)
    return path if os.path.isabs(path) else os.path.abspath(path)


def resolve_config(
    profile: str = "default",
    overrides: Sequence[str] | Mapping[str, Any] = (),
    files: Sequence[Path] = (),
    *,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
) -> Config:
    """A profile with a dataset, a data directory, override files and ``key=value`` overrides (strings, or a
    mapping of keys to values) applied, in that order: the config a run, the CLI and the Python API all start from."""
    overrides = override_strings(overrides)
    first = [f"data.dataset={dataset}"] if dataset else []
    first += [f"data.data_dir={data_dir}"] if data_dir else []
    return load_config(profile, [*first, *overrides], list(files))


def override_strings(overrides: Sequence[str] | Mapping[str, Any]) -> list[str]:
    """Overrides as ``key=value`` strings: a mapping's values as JSON (which the override parser reads as YAML),
    strings as given."""
    if isinstance(overrides, Mapping):
        return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()]
    return list(overrides)


def check_epoch_unit(cfg: PretrainConfig) -> None:
    """Refuse a negative rate that an epoch of pairs cannot have (``check_bounds`` refuses an unknown unit)."""
    if cfg.epoch_unit == PAIRS and cfg.itm_negative_rate != PAIRS_NEGATIVE_RATE:
        raise KbenchError(
            f"pretrain.itm_negative_rate={cfg.itm_negative_rate} needs pretrain.epoch_unit=images: an epoch of "
            f"pairs shows each image once with its own text and once with another's ({PAIRS_NEGATIVE_RATE})"
        )


def read_override_file(path: Path) -> dict[str, Any]:
    """A YAML mapping of config keys, as a profile has them."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise KbenchError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise KbenchError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise KbenchError(f"config file {path}: expected a mapping of config keys")
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, section by section."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_override(cfg: Config, item: str) -> None:
    """Apply one ``a.b.c=value`` override in place, coercing the value to the field's type."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise KbenchError(f"malformed --set {item!r}: expected key=value, e.g. pretrain.lr=1e-4")
    parts = key.split(".")
    node: Any = cfg
    for depth, name in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, dict):
            if last:
                node[name] = _parse_scalar(raw)
            else:
                node = node.setdefault(name, {})
                if not isinstance(node, dict):
                    raise KbenchError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a section")
            continue
        names = [f.name for f in dataclasses.fields(node)]
        if name not in names:
            where = ".".join(parts[:depth]) or "config"
            hint = did_you_mean(name, names, otherwise=f"; {where} has: {', '.join(names)}")
            raise KbenchError(f"unknown config key {key!r}{hint}")
        if last:
            hint = typing.get_type_hints(type(node))[name]
            setattr(node, name, _coerce(_parse_scalar(raw), hint, key))
        else:
            node = getattr(node, name)
            if not (dataclasses.is_dataclass(node) or isinstance(node, dict)):
                raise KbenchError(f"--set {key}: {'.'.join(parts[: depth + 1])} is a value, not a section")


def _parse_scalar(raw: str) -> Any:
    raw = raw.strip()
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            return value
    return value


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a field's type hint, converting ints to floats where a float is wanted."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except KbenchError:
                continue
        raise KbenchError(f"bad value {value!r} for {key}: expected {_type_name(hint)}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise KbenchError(f"bad value {value!r} for {key}: expected a section")
        return build_section(hint, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise KbenchError(f"bad value {value!r} for {key}: expected a list")
        return [_coerce(item, typing.get_args(hint)[0], key) for item in value]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise KbenchError(f"bad value {value!r} for {key}: expected a mapping")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Any or (isinstance(hint, type) and isinstance(value, hint) and not _bool_for_number(value, hint)):
        return value
    raise KbenchError(f"bad value {value!r} for {key}: expected {_type_name(hint)}")


def _bool_for_number(value: Any, hint: type) -> bool:
    return isinstance(value, bool) and hint in (int, float)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def build_section(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and values of the wrong type (named after
    ``where``); a section of the config, or of a zoo entry's options."""
    if not isinstance(data, dict):
        raise KbenchError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise KbenchError(f"{where}: unknown key {unknown[0]!r}{did_you_mean(unknown[0], names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}: {k}") for k, v in data.items()}
    return cls(**kwargs)
