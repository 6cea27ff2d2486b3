"""Evaluating given weights instead of pre-training them: ``model.checkpoint`` names a ``save_pretrained`` directory
(a kbench pre-training checkpoint, an export) or a trial's logged model, ``runs:/<run_id>/model``."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, PreTrainedConfig
from transformers.utils import SAFE_WEIGHTS_NAME

from kbench.core.config import Config
from kbench.core.errors import KbenchError
from kbench.core.integrity import MANIFEST, check_dir, seal_dir
from kbench.core.paths import atomic_dir, cache_dir
from kbench.data.text import load_tokenizer
from kbench.features.encoders import build_encoder
from kbench.models.base import VLPreTrainedModel
from kbench.models.zoo import MODELS, option_defaults, quiet_transformers, with_defaults

log = logging.getLogger(__name__)

RUNS_PREFIX = "runs:/"
MODEL_ARTIFACT = "model"  # where a trial's run logs its pre-trained model
CONFIG_FILE = "config.json"


def is_run_uri(source: str) -> bool:
    return source.startswith(RUNS_PREFIX)


def run_uri(run_id: str) -> str:
    """The logged model of trial run ``run_id``."""
    return f"{RUNS_PREFIX}{run_id}/{MODEL_ARTIFACT}"


def run_id_of(source: str) -> str:
    """The run id of ``runs:/<run_id>/...``."""
    run_id = source.removeprefix(RUNS_PREFIX).strip("/").split("/")[0]
    if not run_id:
        raise KbenchError(f"checkpoint {source!r} names no run; expected runs:/<run_id>/{MODEL_ARTIFACT}")
    return run_id


def local_checkpoint(source: str, tracking_uri: str | None = None) -> Path:
    """The directory holding checkpoint ``source``: the directory itself (refused if it has checksums, as the cache's
    checkpoints do, and fails them), or a run's logged model downloaded once into the cache (keyed by run id) from
    ``tracking_uri``, and again when the download fails its checksums."""
    if not is_run_uri(source):
        path = Path(source).expanduser().resolve()
        if not (path / CONFIG_FILE).is_file():
            what = "has no config.json (not a save_pretrained directory)" if path.is_dir() else "does not exist"
            raise KbenchError(f"checkpoint {source} {what}")
        problem = check_dir(path) if (path / MANIFEST).is_file() else None
        if problem is not None:
            raise KbenchError(f"checkpoint {path} is damaged ({problem})")
        return path
    run_id = run_id_of(source)
    path = cache_dir("checkpoints", "runs") / run_id
    if (path / CONFIG_FILE).is_file():
        problem = check_dir(path)
        if problem is None:
            return path
        log.warning("downloaded checkpoint %s is damaged (%s); downloading it again", path, problem)
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    try:
        with atomic_dir(path) as tmp, tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            local = Path(download_artifacts(artifact_uri=source, dst_path=scratch, tracking_uri=tracking_uri))
            if not (local / CONFIG_FILE).is_file():
                raise KbenchError(f"checkpoint {source} holds no logged model (no {CONFIG_FILE})")
            for item in local.iterdir():  # the artifact directory lands inside dst_path under its own name
                shutil.move(str(item), tmp / item.name)
            seal_dir(tmp)
    except (MlflowException, OSError) as exc:
        message = getattr(exc, "message", str(exc)).splitlines()[0]
        raise KbenchError(f"cannot download checkpoint {source} from {tracking_uri}: {message}") from None
    return path


def source_of(source: str) -> str:
    """``source`` as results record it: a run URI as given, a directory as its absolute path."""
    return source if is_run_uri(source) else str(Path(source).expanduser().resolve())


def identity(source: str) -> dict[str, str]:
    """What a trial's results depend on of its checkpoint: where it is and, for a directory, its weights' digest
    (so that new weights under the same path make a new config; a run's artifacts do not change)."""
    out = {"source": source_of(source)}
    if not is_run_uri(source):
        out["weights_sha256"] = weights_digest(local_checkpoint(source) / SAFE_WEIGHTS_NAME)
    return out


def weights_digest(path: Path) -> str:
    """The sha256 of a weights file (computed once per file version)."""
    if not path.is_file():
        raise KbenchError(f"checkpoint {path.parent} has no {SAFE_WEIGHTS_NAME}")
    stat = path.stat()
    return _sha256(str(path), stat.st_mtime_ns, stat.st_size)


@functools.cache
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_config(path: Path, model: str) -> PreTrainedConfig:
    """The checkpoint's config, refused unless it is of zoo entry ``model``'s type."""
    model_cls = MODELS.get(model)
    expected = model_cls.config_class.model_type
    found = json.loads((path / CONFIG_FILE).read_text()).get("model_type")
    if found != expected:
        raise KbenchError(f"checkpoint {path} is a {found or 'untyped'} model, not {model} ({expected})")
    return model_cls.config_class.from_pretrained(path)


def load_checkpoint(model: str, path: Path) -> VLPreTrainedModel:
    """Zoo entry ``model`` with the checkpoint's weights, refused when any weight is missing or left over."""
    config = read_config(path, model)
    try:
        with quiet_transformers():
            loaded, info = MODELS.get(model).from_pretrained(path, config=config, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise KbenchError(f"cannot load checkpoint {path}: {str(exc).splitlines()[0]}") from None
    misfit = {kind: sorted(keys) for kind, keys in info.items() if kind.endswith("_keys") and keys}
    if misfit:
        parts = "; ".join(f"{kind.replace('_', ' ')}: {', '.join(keys[:3])}" for kind, keys in misfit.items())
        raise KbenchError(f"checkpoint {path} does not fit model {model}: {parts}")
    return loaded


def given_model(model: str, source: str, tracking_uri: str | None, device: torch.device) -> VLPreTrainedModel:
    """The trial's model when it evaluates checkpoint ``source`` instead of pre-training one."""
    return load_checkpoint(model, local_checkpoint(source, tracking_uri)).to(device).eval()


def check_checkpoints(trials: list[tuple[str, Config]], tracking_uri: str | None) -> None:
    """Before any trial starts, for each (zoo entry, resolved config) whose config names a checkpoint: it exists,
    is of the entry's type, was pre-trained with the entry options the config gives, fits the data's vocabulary
    and features, and loads."""
    checked = set()
    for model, cfg in trials:
        key = (model, cfg.model.checkpoint, json.dumps(cfg.models.get(model, {}), sort_keys=True, default=str))
        if cfg.model.checkpoint and key not in checked:
            check_checkpoint(cfg, model, tracking_uri)
            checked.add(key)


def check_checkpoint(cfg: Config, model: str, tracking_uri: str | None) -> Path:
    """One checkpoint as ``check_checkpoints`` checks it; its local directory."""
    source = cfg.model.checkpoint
    path = local_checkpoint(source, tracking_uri)
    config = read_config(path, model)
    model_cls = MODELS.get(model)
    options = with_defaults(model_cls, cfg.models.get(model, {}))
    own = set(options) - set(inspect.signature(BertConfig.__init__).parameters) - {"visual_feature_size"}
    differ = [
        f"{k}={getattr(config, k, None)!r} (config: {options[k]!r})"
        for k in sorted(own)
        if getattr(config, k, None) != options[k]
    ]
    if differ:
        raise KbenchError(
            f"checkpoint {source} was pre-trained with other options of {model}: {', '.join(differ)}; "
            f"set them with --set models.{model}.KEY=VALUE"
        )
    fits = {
        "vocabulary": (config.vocab_size, len(load_tokenizer(cfg.data.tokenizer)), "data.tokenizer"),
        "visual feature size": (
            getattr(config, "visual_feature_size", None),
            build_encoder(cfg.features.encoder, cfg.features.weights).out_dim,
            "features.encoder",
        ),
    }
    for what, (theirs, ours, key) in fits.items():
        if theirs is not None and theirs != ours:
            raise KbenchError(f"checkpoint {source} has a {what} of {theirs}, the data's is {ours} ({key})")
    load_checkpoint(model, path)
    log.info("evaluating checkpoint %s (%s) without pre-training", source, config.model_type)
    return path


def model_of(source: str, tracking_uri: str | None = None) -> str:
    """The zoo entry a checkpoint is of, from its config's ``model_type``."""
    path = local_checkpoint(source, tracking_uri)
    found = json.loads((path / CONFIG_FILE).read_text()).get("model_type")
    for name in MODELS.names():
        if MODELS.get(name).config_class.model_type == found:
            return name
    raise KbenchError(f"checkpoint {source} is a {found or 'untyped'} model, of no zoo entry (kbench ls models)")


def own_options(source: str, model: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The checkpoint's values of the entry options that are its own (not BERT's sizes): what a config evaluating
    it must give (``models.<model>.<option>``)."""
    config = read_config(local_checkpoint(source, tracking_uri), model)
    own = set(option_defaults(MODELS.get(model))) - set(inspect.signature(BertConfig.__init__).parameters)
    return {k: getattr(config, k) for k in sorted(own - {"visual_feature_size"}) if hasattr(config, k)}


def save_instance(model: VLPreTrainedModel) -> Path:
    """A model instance as a checkpoint directory in the cache, named by its weights' digest (saved once)."""
    with tempfile.TemporaryDirectory(dir=cache_dir("checkpoints")) as tmp:
        model.save_pretrained(tmp)
        path = cache_dir("checkpoints", "instances") / weights_digest(Path(tmp) / SAFE_WEIGHTS_NAME)[:16]
        if not (path / CONFIG_FILE).is_file() or check_dir(path) is not None:
            with atomic_dir(path) as out:
                for item in Path(tmp).iterdir():
                    shutil.move(str(item), out / item.name)
                seal_dir(out)
    return path
