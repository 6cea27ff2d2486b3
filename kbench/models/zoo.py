"""The model zoo: the registry of pre-training models, and building an entry from scratch or from BERT.

Entries register themselves with ``@register_model`` in their own file. The registry imports kbench's own
entries (``kbench.models.kaleido`` and every module of ``kbench.baselines``) the first time it is read, and lists the
plug-ins of installed packages (the ``kbench.models`` entry points, imported on first use). A name of the form
``package.module:Class`` names an importable entry without registering it.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import BertConfig, BertForPreTraining
from transformers.models.bert.modeling_bert import BertLMPredictionHead, BertOnlyMLMHead
from transformers.utils import logging as hf_logging

from kbench.core.catalog import plugin_entry_points
from kbench.core.errors import KbenchError, did_you_mean
from kbench.core.registry import Registry
from kbench.models.base import VLPreTrainedModel

log = logging.getLogger(__name__)


BUILTIN_MODULES = ("kbench.models.kaleido.model",)  # and every module of the baselines package
M = TypeVar("M", bound=type[VLPreTrainedModel])


def discover_models() -> None:
    """Import kbench's own entries, so that their ``@register_model`` runs; register the installed plug-ins'
    entry points by name, to be imported when first used (so that a broken one fails alone, naming itself)."""
    import kbench.baselines as baselines

    for module in (*BUILTIN_MODULES, *(m.name for m in pkgutil.iter_modules(baselines.__path__, "kbench.baselines."))):
        importlib.import_module(module)
    for entry in plugin_entry_points():
        if entry.name in MODELS:
            log.warning("entry point %s = %s ignored: model %r already exists", entry.name, entry.value, entry.name)
            continue
        MODELS.register(entry.name, entry.value)


MODELS: Registry[type[VLPreTrainedModel]] = Registry(
    "model", base=VLPreTrainedModel, discover=discover_models, importable=True
)


def register_model(name: str, *, description: str = "") -> Callable[[M], M]:
    """Class decorator registering a zoo entry under ``name``, written above the entry in its own file."""
    return MODELS.register(name, description=description)


ARCHITECTURE_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "hidden_act",
    "layer_norm_eps",
)


NO_INIT = "none"  # model.init_from=none: random initial weights, even where a profile names a checkpoint


def build_model(
    name: str, init_from: str | None, *, init_mlm_head: bool = True, **config_kwargs: Any
) -> VLPreTrainedModel:
    """Instantiate zoo entry ``name`` from scratch, or with its text side initialised from a BERT checkpoint.

    With ``init_from`` (a local path or a hub name), the architecture follows that checkpoint; with
    ``init_mlm_head`` too, the entry's MLM head is the checkpoint's where it has one.
    """
    model_cls = MODELS.get(name)
    if not init_from or init_from == NO_INIT:
        return model_cls(model_cls.config_class(**config_kwargs))
    bert, missing = load_bert(init_from)
    arch = {k: getattr(bert.config, k) for k in ARCHITECTURE_KEYS}
    model = model_cls(model_cls.config_class(**{**config_kwargs, **arch}))
    model.load_bert_weights(bert.bert)
    if init_mlm_head:
        load_mlm_head(model, bert.cls.predictions, missing, init_from)
    return model


def load_bert(name_or_path: str) -> tuple[BertForPreTraining, set[str]]:
    """A BERT checkpoint from a directory or the hub (the hub only when the user names a model), with its
    pre-training heads, and the names of the weights it lacked (a bare encoder has no ``cls.*``)."""
    config = bert_config(name_or_path)
    try:
        with quiet_transformers():  # its report of absent heads is load_mlm_head's to give, once and in kbench's words
            bert, info = BertForPreTraining.from_pretrained(name_or_path, config=config, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise unloadable(name_or_path, exc) from None
    return bert, set(info["missing_keys"])


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings silenced (its errors still shown) for the duration."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_mlm_head(model: VLPreTrainedModel, head: BertLMPredictionHead, missing: set[str], source: str) -> None:
    """Copy BERT's MLM head (the transform's dense layer and LayerNorm, and the decoder bias) into the entry's,
    where both have one; the decoder weight is the word embeddings, tied and already loaded."""
    ours = getattr(model, "mlm_head", None)
    if not isinstance(ours, BertOnlyMLMHead):
        return
    if any(k.startswith("cls.predictions.") for k in missing):
        log.info("BERT checkpoint %s has no MLM head (cls.predictions.*): the MLM head starts random", source)
        return
    ours.predictions.transform.load_state_dict(head.transform.state_dict())
    with torch.no_grad():
        ours.predictions.bias.copy_(head.bias)


def bert_config(name_or_path: str) -> BertConfig:
    """The config of a BERT checkpoint (checked before any trial starts, so that a missing one fails at once)."""
    try:
        return BertConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise unloadable(name_or_path, exc) from None


def unloadable(name_or_path: str, exc: Exception) -> KbenchError:
    where = "directory" if Path(name_or_path).exists() else "name"
    return KbenchError(
        f"cannot load BERT checkpoint {where} {name_or_path!r}: {str(exc).splitlines()[0]} "
        f"(model.init_from={NO_INIT} starts from random weights, to try the code path)"
    )


def option_defaults(model_cls: type[VLPreTrainedModel]) -> dict[str, Any]:
    """The arguments a zoo entry's config class takes (its own and BERT's), with their defaults."""
    defaults: dict[str, Any] = {}
    for klass in reversed(model_cls.config_class.__mro__):
        if klass.__name__ == "PreTrainedConfig" or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        defaults |= {p.name: p.default for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    defaults.pop("self", None)
    return defaults


def with_defaults(model_cls: type[VLPreTrainedModel], options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the entry's defaults filled in, those of a mapping option (Kaleido's ``aag``) key by key, so
    that naming a default changes nothing."""
    defaults = option_defaults(model_cls)
    out = {**defaults, **options}
    for key, default in defaults.items():
        if isinstance(default, Mapping) and isinstance(out[key], Mapping):
            out[key] = {**default, **out[key]}
    return out


def option_names(model_cls: type[VLPreTrainedModel]) -> list[str]:
    """The names of the arguments a zoo entry's config class takes."""
    return sorted(option_defaults(model_cls))


def check_options(name: str, options: dict[str, Any]) -> None:
    """Refuse options the entry's config class does not take, naming the closest ones."""
    known = option_names(MODELS.get(name))
    for key in options:
        if key not in known:
            raise KbenchError(f"model {name} has no option {key!r}{did_you_mean(key, known)}")
