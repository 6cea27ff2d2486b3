"""ImageBERT (Qi, Su, Bharti, Sacheti and Wang, arXiv 2020, "ImageBERT: Cross-modal Pre-training with Large-scale
Weak-supervised Image-Text Data"): a single stream ``[text | image RoIs]`` on BERT blocks.

Words get BERT's linguistic embeddings; each RoI gets the sum of its projected object feature, its projected
5-d location, the image segment and a sequence position shared by all RoIs (they have no order), then
LayerNorm. Pre-training sums ImageBERT's four objectives: masked language modelling (MLM, 15 % of the words,
BERT's 80/10/10 replacement), masked object classification (MOC: 15 % of the RoIs zeroed, each predicting its
detector class under cross-entropy), masked region feature regression (MRFR: the output at a masked RoI,
projected to the feature size, regresses its original feature under L2) and image-text matching (ITM, 2-way on
the pooled [CLS]). Every pair is corrupted alike; MLM, MOC and MRFR are scored on matched pairs only.

kbench's adaptation: no detector runs offline, so RoIs are the 8x8 grid patches of the whole image and the
detector classes become the codebook's ``visual_words`` k-means visual words (``kbench.features.codebook``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform

from kbench.models.api import (
    Codebook,
    PretrainingContext,
    SingleStreamForPreTraining,
    SingleStreamModel,
    VLPreTrainingOutput,
    mask_pairs,
    register_model,
)


class ImageBertConfig(BertConfig):
    """BERT's configuration plus ImageBERT's image side and pre-training options.

    Args:
        visual_feature_size: dimension of one patch feature (2048 for ResNet-50).
        patch_scheme: how images are cut into patches, the stand-in for detector RoIs (``grid-8``).
        mlm_probability: share of words masked for MLM (ImageBERT: 15 %).
        patch_mask_probability: share of patches masked for MOC and MRFR (ImageBERT: 15 %).
        visual_words: codebook size, the stand-in for the detector's object classes (MOC targets).
        **kwargs: ``BertConfig`` arguments (sizes, dropout, vocabulary); defaults build BERT-base.
    """

    model_type = "kbench-imagebert"

    def __init__(
        self,
        visual_feature_size: int = 2048,
        patch_scheme: str = "grid-8",
        mlm_probability: float = 0.15,
        patch_mask_probability: float = 0.15,
        visual_words: int = 64,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.visual_feature_size = visual_feature_size
        self.patch_scheme = patch_scheme
        self.mlm_probability = mlm_probability
        self.patch_mask_probability = patch_mask_probability
        self.visual_words = visual_words


class ImageBertPatchEmbeddings(nn.Module):
    """ImageBERT's image embedding: projected object feature plus projected 5-d location plus one learned vector
    for the image segment and the sequence position all RoIs share, then LayerNorm."""

    def __init__(self, config: ImageBertConfig) -> None:
        super().__init__()
        self.feature_projection = nn.Linear(config.visual_feature_size, config.hidden_size)
        self.location_projection = nn.Linear(5, config.hidden_size)
        self.segment_position = nn.Embedding(1, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, features: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        x = self.feature_projection(features) + self.location_projection(locations) + self.segment_position.weight[0]
        return self.dropout(self.LayerNorm(x))


class ImageBertModel(SingleStreamModel):
    """The bare ImageBERT encoder: ``[text | patches]`` -> hidden states and pooled [CLS]."""

    config_class = ImageBertConfig

    def __init__(self, config: ImageBertConfig) -> None:
        super().__init__(config)
        self.patch_embeddings = ImageBertPatchEmbeddings(config)
        self.post_init()


@dataclass
class ImageBertCollator:
    """Adds ImageBERT's MLM, MOC and MRFR targets to a batch of (possibly mismatched) image-text pairs.

    Every pair is corrupted alike, so corruption says nothing about the ITM label; the masked losses are taken
    on matched pairs only. ``patch_labels`` holds the codebook visual word of the original feature at the scored
    patches and -100 elsewhere; ``patch_targets`` the original features (MRFR).
    """

    config: ImageBertConfig
    mask_token_id: int
    codebook: Codebook

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        matched, masked = mask_pairs(batch, self.config, self.mask_token_id, generator)
        patches = batch["patch_features"]
        batch["patch_targets"] = patches
        batch["patch_features"] = patches.masked_fill(masked[..., None], 0.0)
        batch["patch_labels"] = self.codebook.assign(patches).masked_fill(~(masked & matched), -100)
        return batch


@register_model(
    "imagebert",
    description="ImageBERT-style single stream [text | 8x8 patches]: MLM, ITM, masked object classification over"
    " codebook visual words, masked region feature regression (L2)",
)
class ImageBertForPreTraining(SingleStreamForPreTraining):
    """ImageBERT with its MLM (tied to the embeddings), ITM, MOC and MRFR heads; ``forward`` returns the summed
    pre-training losses."""

    config_class = ImageBertConfig
    collator = ImageBertCollator

    def __init__(self, config: ImageBertConfig) -> None:
        super().__init__(config, ImageBertModel(config))
        self.region_head = nn.Sequential(
            BertPredictionHeadTransform(config), nn.Linear(config.hidden_size, config.visual_words)
        )
        self.feature_head = nn.Sequential(
            BertPredictionHeadTransform(config), nn.Linear(config.hidden_size, config.visual_feature_size)
        )
        self.post_init()

    @classmethod
    def pretraining_collator(cls, config: ImageBertConfig, context: PretrainingContext) -> ImageBertCollator:
        return cls.collator(config, context.tokenizer.mask_token_id, context.codebook(config.visual_words))

    def masked_region_losses(
        self, patches: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MOC cross-entropy, MOC accuracy and MRFR mean squared error at the labelled patches only."""
        where = labels != -100
        if not where.any():
            zero = patches.sum() * 0
            return zero, zero.detach(), zero
        logits = self.region_head(patches[where]).float()
        target = labels[where]
        mrfr_loss = F.mse_loss(self.feature_head(patches[where]).float(), targets[where].float())
        return F.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean(), mrfr_loss

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        patch_features: torch.Tensor,
        patch_locations: torch.Tensor,
        mlm_labels: torch.Tensor,
        itm_labels: torch.Tensor,
        patch_labels: torch.Tensor,
        patch_targets: torch.Tensor,
    ) -> VLPreTrainingOutput:
        out = self.vl(input_ids, attention_mask, patch_features, patch_locations)
        text_len = input_ids.shape[1]
        mlm_loss, mlm_acc = self.masked_lm_loss(out.last_hidden_state[:, :text_len], mlm_labels)
        itm_loss, itm_acc = self.itm_loss(out.pooler_output, itm_labels)
        moc_loss, moc_acc, mrfr_loss = self.masked_region_losses(
            out.last_hidden_state[:, text_len:], patch_labels, patch_targets
        )
        losses = {"mlm_loss": mlm_loss, "itm_loss": itm_loss, "moc_loss": moc_loss, "mrfr_loss": mrfr_loss}
        return VLPreTrainingOutput(
            loss=sum(losses.values()),
            losses=losses,
            accuracies={"mlm_acc": mlm_acc, "itm_acc": itm_acc, "moc_acc": moc_acc},
        )
