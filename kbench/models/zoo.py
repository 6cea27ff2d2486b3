"""The model zoo: the registry of pre-training models and the interface every entry offers the tasks.

An entry is a transformers ``PreTrainedModel`` (config class, bare model, heads) whose ``forward`` computes
its own pre-training losses from the batch its ``collator`` builds. The downstream tasks only use the
methods declared on ``VLPreTrainedModel``, so every entry runs the same tasks, protocols and metrics.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn
from transformers import BertConfig, BertForPreTraining, BertModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLMPredictionHead, BertOnlyMLMHead
from transformers.utils import ModelOutput
from transformers.utils import logging as hf_logging

from kbench.core.errors import KbenchError
from kbench.core.registry import Registry
from kbench.features.patch_features import Patching
from kbench.features.patches import get_scheme

if TYPE_CHECKING:
    from kbench.engine.trial import Trial

log = logging.getLogger(__name__)


class Collator(Protocol):
    """Adds an entry's corruptions and targets to a batch of pairs (``itm_labels``, ``image_positions`` and
    ``text_positions`` included), drawing randomness from ``generator``."""

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]: ...


@dataclass
class VLPreTrainingOutput(ModelOutput):
    """Pre-training output: the summed ``loss`` and, for logging, each objective's loss and accuracy."""

    loss: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] | None = None
    accuracies: dict[str, torch.Tensor] | None = None


class VLPreTrainedModel(PreTrainedModel):
    """Base of zoo entries: BERT-style initialisation plus the task-facing methods.

    Inputs are always ``input_ids``/``attention_mask`` (B, T) for the text and ``patch_features`` (B, K, D)
    with ``patch_locations`` (B, K, 5) for the image.
    """

    base_model_prefix = "vl"
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _supports_attention_backend = True
    collator: ClassVar[type]  # builds pre-training batches for this entry
    generates_text: ClassVar[bool] = True  # has mlm_logits, so it can caption; a dual encoder cannot
    # Scores pairs by embedding similarity (embed_images, embed_texts); its forward on matched pairs (itm_labels all 1)
    # is its contrastive objective, which retrieval fine-tuning then uses instead of binary ITM.
    dual_encoder: ClassVar[bool] = False
    # Pre-trains on mismatched pairs too (ITM negatives at pretrain.itm_negative_rate); an entry whose pre-training
    # has no matching objective (VL-BERT, CLIP) sees matched pairs only, so no pair is drawn just to go unscored.
    pretrains_on_mismatches: ClassVar[bool] = True

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation, including the buffers ``from_pretrained`` leaves to it."""
        super()._init_weights(module)
        if isinstance(module, BertLMPredictionHead):
            init.zeros_(module.bias)
        elif isinstance(module, BertEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)

    @classmethod
    def patching(cls, config: PreTrainedConfig) -> Patching:
        """How images become this entry's patches; by default its ``patch_scheme`` over the whole image."""
        return Patching(get_scheme(config.patch_scheme))

    @classmethod
    def prepare(cls, trial: Trial) -> dict[str, float]:
        """Build what pre-training needs beyond features (e.g. alignments) and return measurements of it."""
        return {}

    @classmethod
    def pretraining_collator(cls, config: PreTrainedConfig, trial: Trial) -> Collator:
        """The callable that turns a batch of image-text pairs into this entry's pre-training batch."""
        return cls.collator(config, trial.tokenizer.mask_token_id)

    def pooled_output(self, **inputs: torch.Tensor) -> torch.Tensor:
        """(B, H) joint representation ([CLS] after the pooler), fed to classification heads."""
        raise NotImplementedError

    def itm_logits(self, **inputs: torch.Tensor) -> torch.Tensor:
        """(B, 2) image-text matching logits; class 1 means "match"."""
        raise NotImplementedError

    def mlm_logits(self, where: torch.Tensor | None = None, **inputs: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits at the text positions ``where`` (B, T) bool selects, (N, V); all of them, (B, T, V),
        when ``where`` is None. Used for captioning by mask-predict."""
        raise NotImplementedError

    def embed_images(self, patch_features: torch.Tensor, patch_locations: torch.Tensor) -> torch.Tensor:
        """(B, E) unit-norm image embeddings; dual encoders only."""
        raise NotImplementedError

    def embed_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, E) unit-norm text embeddings; dual encoders only."""
        raise NotImplementedError

    def embedding_scores(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Class-1 ITM logits of image and text embeddings paired along their broadcast leading dimensions (..., E)
        -> (...); dual encoders only."""
        raise NotImplementedError

    def load_bert_weights(self, bert: BertModel) -> None:
        """Copy a BERT checkpoint's text embeddings, encoder and pooler into this model."""
        raise NotImplementedError


MODELS: Registry[type[VLPreTrainedModel]] = Registry("model", base=VLPreTrainedModel)
MODELS.register(
    "fashionbert",
    "baselines.fashionbert:FashionBertForPreTraining",
    description="FashionBERT-style single stream [text | 8x8 patches]: MLM, ITM, masked patch feature KL,"
    " weighted by FashionBERT's adaptive loss",
)
MODELS.register(
    "kaleido",
    "kbench.models.kaleido.model:KaleidoBertForPreTraining",
    description="Kaleido-BERT: single stream [text | 55 kaleido patches of the saliency-locked garment];"
    " AMLM with alignment-guided masking, ITM, AKPM (rotation, jigsaw, camouflage, grey/blank-to-colour KL)",
)
MODELS.register(
    "vlbert",
    "baselines.vlbert:VLBertForPreTraining",
    description="VL-BERT-style single stream [text | 8x8 patches] with a whole-image visual embedding on every word:"
    " MLM with visual clues, masked RoI classification over codebook visual words; ITM head fine-tuned only",
)
MODELS.register(
    "imagebert",
    "baselines.imagebert:ImageBertForPreTraining",
    description="ImageBERT-style single stream [text | 8x8 patches]: MLM, ITM, masked object classification over"
    " codebook visual words, masked region feature regression (L2)",
)
MODELS.register(
    "vilbert",
    "baselines.vilbert:ViLBertForPreTraining",
    description="ViLBERT-style two streams, BERT text | 8x8 patches after a mean-patch [IMG], joined by co-attention;"
    " joint = pooled [CLS] x [IMG]: MLM, masked region KL to codebook visual words (detector classes), ITM",
)
MODELS.register(
    "oscar",
    "baselines.oscar:OscarForPreTraining",
    description="OSCAR-style single stream [text | 8 tags | 8x8 patches], tags from an in-model image tagger (for"
    " detector tags): masked token loss over text and tags, contrastive loss with polluted tags (also ITM), tag BCE",
)
MODELS.register(
    "clip",
    "baselines.clip:ClipForPreTraining",
    description="CLIP-style dual encoder (not in the paper): BERT text encoder and a transformer over 8x8 patch"
    " features, symmetric contrastive loss; retrieval by cosine similarity (also the full gallery), no captioning",
)


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


def option_names(model_cls: type[VLPreTrainedModel]) -> list[str]:
    """The names of the arguments a zoo entry's config class takes."""
    return sorted(option_defaults(model_cls))


def check_options(name: str, options: dict[str, Any]) -> None:
    """Refuse options the entry's config class does not take, naming the closest ones."""
    known = option_names(MODELS.get(name))
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KbenchError(f"model {name} has no option {key!r}{hint}")
