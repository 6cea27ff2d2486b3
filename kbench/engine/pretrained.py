"""A trial's pre-trained model: the checkpoint an earlier trial with the same pre-training key left in the cache, or
pre-trained now, in this process or data-parallel over Ray Train workers (``kbench.engine.distributed``)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from filelock import FileLock
from safetensors import SafetensorError

from kbench.core.integrity import check_dir, seal_dir
from kbench.core.paths import atomic_dir, cache_dir
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
                    save_checkpoint(*pretrain(trial, state), tmp)
                seal_dir(tmp)
            state.clear()
            model = trial.model_cls.from_pretrained(path)
    return model.to(trial.device).eval(), json.loads((path / HISTORY_FILE).read_text())


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
