"""A trial's pre-trained model: the checkpoint an earlier trial with the same pre-training key left in the cache, or
pre-trained now, in this process or data-parallel over Ray Train workers (``kbench.engine.distributed``)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from filelock import FileLock
from safetensors import SafetensorError

from kbench.core.errors import KbenchError
from kbench.core.integrity import check_dir, seal_dir
from kbench.core.paths import atomic_dir, cache_dir, check_space, write_failed
from kbench.engine.pretraining import HISTORY_FILE, pretrain, save_checkpoint, training_state
from kbench.engine.trial import Trial
from kbench.models.base import VLPreTrainedModel

log = logging.getLogger(__name__)


def pretrained_model(trial: Trial) -> tuple[VLPreTrainedModel, list[dict[str, float]]]:
    """The trial's pre-trained model and its per-epoch curves, trained now or loaded from the checkpoint
    that any earlier trial with the same pre-training hash left in the cache.

    A cached checkpoint whose weights no longer fit the entry's parameters (left by an older version of its
    code), or whose files fail their checksums (written last, after the weights), is a cache miss: it is removed and
    pre-trained again rather than loaded with parts left at random or damaged.
    """
    path = cache_dir("checkpoints") / f"{trial.spec.model}-{trial.pretrain_key()}"
    with FileLock(str(path) + ".lock"):
        model = None
        if path.exists():
            model, info = _load_cached(trial, path)
            misfit = {kind: sorted(keys) for kind, keys in info.items() if kind.endswith("_keys") and keys}
            if model is None:
                shutil.rmtree(path)
            elif misfit:
                log.warning("cached checkpoint %s does not fit the model (%s); pre-training again", path, misfit)
                shutil.rmtree(path)
                model = None
            else:
                log.info("reusing pre-trained checkpoint %s", path)
        if model is None:
            state = training_state(trial)
            with atomic_dir(path) as tmp:
                if trial.cfg.pretrain.workers > 1:
                    from kbench.engine.distributed import pretrain_data_parallel  # Ray Train, only when asked for

                    pretrain_data_parallel(trial, tmp)
                else:
                    _save(*pretrain(trial, state), tmp, path)
                seal_dir(tmp)
            state.clear()
            model = trial.model_cls.from_pretrained(path)
    return model.to(trial.device).eval(), json.loads((path / HISTORY_FILE).read_text())


def _save(model: VLPreTrainedModel, history: list[dict[str, float]], tmp: Path, path: Path) -> None:
    """The checkpoint into ``tmp`` (to be renamed ``path``), its space checked first: a full disk is one line naming
    the checkpoint and the space needed and free, not safetensors' or torch's serialisation error."""
    needed = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    check_space(tmp.parent, needed, f"the pre-trained checkpoint {path.name}")
    try:
        save_checkpoint(model, history, tmp)
    except OSError as exc:
        raise write_failed(exc, path, "the pre-trained checkpoint") from None
    except SafetensorError as exc:  # its I/O errors carry no errno
        free = shutil.disk_usage(tmp.parent).free / 1e6
        raise KbenchError(f"cannot write the pre-trained checkpoint to {path}: {exc} ({free:.1f} MB free)") from None


def _load_cached(trial: Trial, path: Path) -> tuple[VLPreTrainedModel | None, dict]:
    """The cached checkpoint at ``path`` and its loading info; no model (and a warning) if it is damaged."""
    problem = check_dir(path)
    if problem is None:
        try:
            return trial.model_cls.from_pretrained(path, output_loading_info=True)
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    log.warning("cached checkpoint %s is damaged (%s); pre-training again", path, problem)
    return None, {}
