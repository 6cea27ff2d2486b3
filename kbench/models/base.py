"""The interface every zoo entry offers: its pre-training output, its collator, and the task-facing methods.

An entry is a transformers ``PreTrainedModel`` (config class, bare model, heads) whose ``forward`` computes
its own pre-training losses from the batch its ``collator`` builds. The downstream tasks only use the
methods declared on ``VLPreTrainedModel``, so every entry runs the same tasks, protocols and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import nn
from transformers import BertModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLMPredictionHead
from transformers.utils import ModelOutput

from kbench.features.patch_features import Patching
from kbench.features.patches import get_scheme
from kbench.models.context import PretrainingContext


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
    # The row name in kbench's tables, as "<display_name> (kbench)"; empty: the name the entry is run under.
    display_name: ClassVar[str] = ""

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
    def prepare(cls, config: PreTrainedConfig, context: PretrainingContext) -> dict[str, float]:
        """Build what pre-training needs beyond features (e.g. alignments) and return measurements of it."""
        return {}

    @classmethod
    def pretraining_collator(cls, config: PreTrainedConfig, context: PretrainingContext) -> Collator:
        """The callable that turns a batch of image-text pairs into this entry's pre-training batch."""
        return cls.collator(config, context.tokenizer.mask_token_id)

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
