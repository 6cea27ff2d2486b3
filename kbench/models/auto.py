"""transformers' Auto classes for kbench checkpoints: after ``import kbench.models``, ``AutoConfig`` and ``AutoModel``
load a ``save_pretrained`` directory of any zoo entry by its config's ``model_type`` (``kbench-<name>``)."""

from __future__ import annotations

import logging

from transformers import CONFIG_MAPPING, AutoConfig, AutoModel, AutoModelForPreTraining

from kbench.core.errors import KbenchError
from kbench.models.zoo import MODELS

log = logging.getLogger(__name__)


def register_auto_classes() -> None:
    """Register every zoo entry's config with ``AutoConfig`` and the entry (its model with the pre-training heads
    the tasks use) with ``AutoModel`` and ``AutoModelForPreTraining``; again-registering is harmless. An entry whose
    ``model_type`` is empty or a transformers type of another config class is left out."""
    for name in MODELS.names():
        try:
            model_cls = MODELS.get(name)
        except KbenchError as exc:  # a broken plug-in fails when used, naming itself; import kbench.models still works
            log.debug("%s; not registered with AutoConfig", exc)
            continue
        config_cls = model_cls.config_class
        model_type = config_cls.model_type
        if not model_type or (model_type in CONFIG_MAPPING and CONFIG_MAPPING[model_type] is not config_cls):
            log.debug("zoo entry %s: model_type %r is not its own; not registered with AutoConfig", name, model_type)
            continue
        AutoConfig.register(model_type, config_cls, exist_ok=True)
        AutoModel.register(config_cls, model_cls, exist_ok=True)
        AutoModelForPreTraining.register(config_cls, model_cls, exist_ok=True)
