"""CLIP-style dual encoder (Radford et al., ICML 2021, "Learning Transferable Visual Models From Natural Language
Supervision"): not in the Kaleido-BERT paper, but the design most later fashion retrieval models build on.

A text encoder (BERT: embeddings, encoder, [CLS]) and an image encoder (a transformer of the same size over the
patch features, with a learned [CLS] token) each end in a linear projection; image and text meet only in the cosine
similarity of their normalised embeddings. Pre-training: the symmetric contrastive (InfoNCE) loss over a batch of
matched pairs (``pretrains_on_mismatches`` off: the other pairs' texts are the negatives), with a learned
temperature. kbench's image side is a transformer over frozen CNN patch features (grid patches, as for the other
entries), not a ViT or ResNet trained end to end.

Downstream: retrieval ranks by similarity (``itm_logits`` puts the scaled cosine less a learned bias in class 1: ITM
fine-tuning places the match threshold through the bias, which never changes a ranking); the retrieval task also
scores the ``full`` gallery from the embeddings. CR and SUB train linear heads on the two projections side by
side, before normalisation. A dual encoder cannot generate text, so it takes no captioning task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertEmbeddings, BertEncoder

from kbench.models.api import VLPreTrainedModel, VLPreTrainingOutput, register_model


class ClipConfig(BertConfig):
    """BERT's configuration (sizes of both encoders) plus the image side and the contrastive temperature.

    Args:
        visual_feature_size: dimension of one patch feature (2048 for ResNet-50).
        patch_scheme: how images are cut into patches (``grid-8``, as FashionBERT).
        contrastive_temperature: the initial temperature of the contrastive softmax (CLIP: 0.07); learned, its
            inverse capped at 100. (Not ``temperature``: transformers reads that as a generation setting.)
        **kwargs: ``BertConfig`` arguments; the joint embedding has ``hidden_size // 2`` dimensions per modality, so
            the two side by side make the ``hidden_size`` features the classification heads take.
    """

    model_type = "kbench-clip"

    def __init__(
        self,
        visual_feature_size: int = 2048,
        patch_scheme: str = "grid-8",
        contrastive_temperature: float = 0.07,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.visual_feature_size = visual_feature_size
        self.patch_scheme = patch_scheme
        self.contrastive_temperature = contrastive_temperature

    @property
    def projection_dim(self) -> int:
        return self.hidden_size // 2


class ClipImageEncoder(nn.Module):
    """Patch feature and 5-d location projected, a learned [CLS] prepended, a BERT encoder; the [CLS] state out."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        self.config = config
        self.feature_projection = nn.Linear(config.visual_feature_size, config.hidden_size)
        self.location_projection = nn.Linear(5, config.hidden_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, config.hidden_size) * config.initializer_range)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.encoder = BertEncoder(config)

    def forward(self, patch_features: torch.Tensor, patch_locations: torch.Tensor) -> torch.Tensor:
        patches = self.feature_projection(patch_features) + self.location_projection(patch_locations)
        cls = self.cls_token.expand(len(patches), -1, -1)
        hidden = self.dropout(self.LayerNorm(torch.cat([cls, patches], dim=1)))
        return self.encoder(hidden).last_hidden_state[:, 0]


class ClipTextEncoder(nn.Module):
    """BERT embeddings and encoder; the [CLS] state out."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(input_ids=input_ids)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        return self.encoder(hidden, attention_mask=mask).last_hidden_state[:, 0]


@dataclass
class ClipCollator:
    """CLIP needs no corruption: it keeps the pairs and their match labels (only matched pairs enter the loss)."""

    config: ClipConfig
    mask_token_id: int

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        for key in ("image_positions", "text_positions", "word_ids"):
            del batch[key]
        return batch


@register_model(
    "clip",
    description="CLIP-style dual encoder (not in the paper): BERT text encoder and a transformer over 8x8 patch"
    " features, symmetric contrastive loss; retrieval by cosine similarity (also the full gallery), no captioning",
)
class ClipForPreTraining(VLPreTrainedModel):
    """The dual encoder with its projections, temperature and the match bias used in ITM fine-tuning."""

    config_class = ClipConfig
    collator = ClipCollator
    dual_encoder: ClassVar[bool] = True
    generates_text: ClassVar[bool] = False
    pretrains_on_mismatches: ClassVar[bool] = False

    def __init__(self, config: ClipConfig) -> None:
        super().__init__(config)
        self.text_model = ClipTextEncoder(config)
        self.vision_model = ClipImageEncoder(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.contrastive_temperature)))
        self.match_bias = nn.Parameter(torch.zeros(()))
        self.post_init()

    def project_images(self, patch_features: torch.Tensor, patch_locations: torch.Tensor) -> torch.Tensor:
        """(B, hidden_size // 2) image projections, before normalisation."""
        return self.visual_projection(self.vision_model(patch_features, patch_locations))

    def project_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, hidden_size // 2) text projections, before normalisation."""
        return self.text_projection(self.text_model(input_ids, attention_mask))

    def embed_images(self, patch_features: torch.Tensor, patch_locations: torch.Tensor) -> torch.Tensor:
        """(B, hidden_size // 2) unit-norm image embeddings."""
        return F.normalize(self.project_images(patch_features, patch_locations), dim=-1)

    def embed_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, hidden_size // 2) unit-norm text embeddings."""
        return F.normalize(self.project_texts(input_ids, attention_mask), dim=-1)

    def scale(self) -> torch.Tensor:
        """The inverse temperature, capped at 100 as in CLIP."""
        return self.logit_scale.exp().clamp(max=100.0)

    def embedding_scores(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The scaled cosine less the match bias."""
        return self.scale() * (image * text).sum(-1) - self.match_bias

    def pooled_output(self, **inputs: torch.Tensor) -> torch.Tensor:
        """The classification heads' features: both projections side by side, before normalisation (unit-norm
        halves give a freshly initialised linear head logits too small to train in a few epochs)."""
        image = self.project_images(inputs["patch_features"], inputs["patch_locations"])
        text = self.project_texts(inputs["input_ids"], inputs["attention_mask"])
        return torch.cat([image, text], dim=-1)

    def itm_logits(self, **inputs: torch.Tensor) -> torch.Tensor:
        image = self.embed_images(inputs["patch_features"], inputs["patch_locations"])
        text = self.embed_texts(inputs["input_ids"], inputs["attention_mask"])
        match = self.embedding_scores(image, text)
        return torch.stack([torch.zeros_like(match), match], dim=-1)

    def load_bert_weights(self, bert: BertModel) -> None:
        self.text_model.embeddings.load_state_dict(bert.embeddings.state_dict())
        self.text_model.encoder.load_state_dict(bert.encoder.state_dict())

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        patch_features: torch.Tensor,
        patch_locations: torch.Tensor,
        itm_labels: torch.Tensor,
    ) -> VLPreTrainingOutput:
        matched = itm_labels.bool()
        if matched.sum() < 2:  # no in-batch negatives to contrast with
            zero = self.logit_scale * 0
            return VLPreTrainingOutput(
                loss=zero, losses={"contrastive_loss": zero}, accuracies={"contrastive_acc": zero}
            )
        image = self.embed_images(patch_features[matched], patch_locations[matched])
        text = self.embed_texts(input_ids[matched], attention_mask[matched])
        logits = self.scale() * image @ text.T
        target = torch.arange(len(logits), device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        accuracy = ((logits.argmax(-1) == target).float().mean() + (logits.argmax(0) == target).float().mean()) / 2
        return VLPreTrainingOutput(
            loss=loss, losses={"contrastive_loss": loss}, accuracies={"contrastive_acc": accuracy}
        )
