"""A trial's pre-trained model: the checkpoint an earlier trial with the same pre-training key left in the cache, or
pre-trained now, in this process or data-parallel over Ray Train workers (``kbench.engine.distributed``)."""

from __future__ import annotations

import json
import logging
import shutil

from filelock import FileLock

from kbench.core.paths import atomic_dir, cache_dir
from kbench.engine.pretraining import HISTORY_FILE, pretrain, save_checkpoint, training_state
from kbench.engine.trial import Trial
from kbench.models.base import VLPreTrainedModel

log = logging.getLogger(__name__)


def pretrained_model(trial: Trial) -> tuple[VLPreTrainedModel, list[dict[str, float]]]:
    """The trial's pre-trained model and its per-epoch curves, trained now or loaded from the checkpoint
    that any earlier trial with the same pre-training hash left in the cache.

    A cached checkpoint whose weights no longer fit the entry's parameters (left by an older version of its
    code) is a cache miss: it is removed and pre-trained again rather than loaded with parts left at random.
    """
    path = cache_dir("checkpoints") / f"{trial.spec.model}-{trial.pretrain_key()}"
    with FileLock(str(path) + ".lock"):
        model = None
        if (path / HISTORY_FILE).exists():
            model, info = trial.model_cls.from_pretrained(path, output_loading_info=True)
            misfit = {kind: sorted(keys) for kind, keys in info.items() if kind.endswith("_keys") and keys}
            if misfit:
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
            state.clear()
            model = trial.model_cls.from_pretrained(path)
    return model.to(trial.device).eval(), json.loads((path / HISTORY_FILE).read_text())
