"""VL-BERT (Su, Zhu, Cao, Li, Lu, Wei and Dai, ICLR 2020, "VL-BERT: Pre-training of Generic Visual-Linguistic
Representations"): a single stream ``[text | visual elements]`` whose every token also carries a visual feature
embedding: the whole image's for a word, its own region's for a visual element.

Each word's input is LayerNorm(word + visual feature embedding of the whole image + segment + position); each
visual element's is an [IMG] token plus its own visual feature embedding (appearance feature and geometry),
with a segment of its own and one position shared by all of them. As in VL-BERT's pre-training configuration,
the visual feature embeddings pass through LayerNorms whose gains start at 0, so BERT-initialised text
embeddings start unchanged. Pre-training sums VL-BERT's two objectives: masked language modelling with visual
clues (15 % of the words, BERT's 80/10/10 replacement) and masked RoI classification with linguistic clues
(15 % of the regions, 90 % of those zeroed and 10 % left unaltered as in the released code, each predicting
its detector class under cross-entropy, as the paper states; the released code uses the detector's soft class
scores instead). Both corruptions share one forward pass, as in the released code, and the whole-image
embedding is computed from the corrupted features, so a zeroed region's own feature cannot reach the words
(VL-BERT zeroes the masked RoI's pixels before extracting the whole-image feature).

VL-BERT dropped its third task, sentence-image relationship prediction, so it pre-trains on matched pairs only
(``pretrains_on_mismatches``), every pair feeding both objectives, and the ITM head (2-way on the pooled [CLS])
gets no loss in pre-training: the retrieval tasks train it in fine-tuning.

kbench's adaptation: no detector runs offline, so regions are the 8x8 grid patches of the whole image, the
whole-image appearance feature is the mean of the (corrupted) patch features, and the detector classes become
the codebook's ``visual_words`` k-means visual words (``kbench.features.codebook``). Whole-word masking (released code)
is replaced by BERT's word-piece masking, as in the other entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling
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

REGION_ZERO_SHARE = 0.9  # VL-BERT zeroes 90 % of the masked regions' features and leaves 10 % unaltered


class VLBertConfig(BertConfig):
    """BERT's configuration plus VL-BERT's visual feature embedding and pre-training options.

    Args:
        visual_feature_size: dimension of one patch feature (2048 for ResNet-50).
        patch_scheme: how images are cut into patches, the stand-in for detector regions (``grid-8``).
        mlm_probability: share of words masked for masked language modelling (VL-BERT: 15 %).
        patch_mask_probability: share of patches masked for masked RoI classification (VL-BERT: 15 %).
        visual_words: codebook size, the stand-in for the detector's classes (VL-BERT: Visual Genome's 1601).
        **kwargs: ``BertConfig`` arguments (sizes, dropout, vocabulary); defaults build BERT-base.
    """

    model_type = "kbench-vlbert"

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


class VLBertVisualNorm(nn.LayerNorm):
    """LayerNorm of a visual feature embedding; its gain starts at 0 (VL-BERT's ``visual_scale_*_init``). A class of
    its own so that the initialisation can tell it from BERT's LayerNorms."""


class VLBertVisualEmbeddings(nn.Module):
    """VL-BERT's visual feature embedding, for the words (whole image) and for the patch tokens (their own).

    The appearance feature and 5-d geometry are projected to the hidden size, then LayerNorm-ed with a gain that
    starts at 0 (one LayerNorm for words, one for patches). A patch token adds a learned vector standing for the
    [IMG] word, the image segment and the position all visual elements share, then the embedding LayerNorm.
    """

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__()
        self.feature_projection = nn.Linear(config.visual_feature_size, config.hidden_size)
        self.location_projection = nn.Linear(5, config.hidden_size)
        self.text_visual_norm = VLBertVisualNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.patch_visual_norm = VLBertVisualNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.image_token = nn.Embedding(1, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def whole_image(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 1, H) visual feature embedding of the whole image, added to every word. Its geometry, the whole
        image, is the same for every pair, so only the mean patch feature is projected."""
        return self.text_visual_norm(self.feature_projection(features.mean(dim=1, keepdim=True)))

    def forward(self, features: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        visual = self.patch_visual_norm(self.feature_projection(features) + self.location_projection(locations))
        return self.dropout(self.LayerNorm(visual + self.image_token.weight[0]))


class VLBertModel(SingleStreamModel):
    """The bare VL-BERT encoder: ``[text | patches]`` -> hidden states and pooled [CLS], with the whole image's
    visual feature embedding added to every word before BERT's embedding LayerNorm."""

    config_class = VLBertConfig

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__(config)
        self.patch_embeddings = VLBertVisualEmbeddings(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation, with VL-BERT's zero gains on the visual feature embedding's LayerNorms."""
        super()._init_weights(module)
        if isinstance(module, VLBertVisualNorm):
            init.zeros_(module.weight)
            init.zeros_(module.bias)

    def embed(
        self, input_ids: torch.Tensor, patch_features: torch.Tensor, patch_locations: torch.Tensor
    ) -> torch.Tensor:
        """(B, T + K, H) input embeddings of the words (each with the whole image's visual embedding) and patches."""
        words = self.embeddings.word_embeddings(input_ids) + self.patch_embeddings.whole_image(patch_features)
        text = self.embeddings(inputs_embeds=words)
        return torch.cat([text, self.patch_embeddings(patch_features, patch_locations)], dim=1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        patch_features: torch.Tensor,
        patch_locations: torch.Tensor,
    ) -> BaseModelOutputWithPooling:
        hidden = self.embed(input_ids, patch_features, patch_locations)
        patch_mask = attention_mask.new_ones(patch_features.shape[:2])  # patches are never padded
        mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=torch.cat([attention_mask, patch_mask], dim=1),
        )
        sequence = self.encoder(hidden, attention_mask=mask).last_hidden_state
        return BaseModelOutputWithPooling(last_hidden_state=sequence, pooler_output=self.pooler(sequence))


@dataclass
class VLBertCollator:
    """Adds VL-BERT's masked word and masked RoI targets to a batch of image-text pairs (pre-training draws matched
    ones only for VL-BERT; a mismatched pair, whose text does not describe the image, would be corrupted alike and
    not scored). ``patch_labels`` holds the codebook visual word of the original feature at the scored patches and
    -100 elsewhere. VL-BERT has no matching loss, so ``itm_labels`` is dropped.
    """

    config: VLBertConfig
    mask_token_id: int
    codebook: Codebook

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        matched, masked = mask_pairs(batch, self.config, self.mask_token_id, generator)
        del batch["itm_labels"]  # VL-BERT does not pre-train ITM
        patches = batch["patch_features"]
        zeroed = masked & (torch.rand(masked.shape, generator=generator) < REGION_ZERO_SHARE)
        batch["patch_features"] = patches.masked_fill(zeroed[..., None], 0.0)
        batch["patch_labels"] = self.codebook.assign(patches).masked_fill(~(masked & matched), -100)
        return batch


@register_model(
    "vlbert",
    description="VL-BERT-style single stream [text | 8x8 patches] with a whole-image visual embedding on every word:"
    " MLM with visual clues, masked RoI classification over codebook visual words; ITM head fine-tuned only",
)
class VLBertForPreTraining(SingleStreamForPreTraining):
    """VL-BERT with its masked word (tied to the embeddings) and masked RoI classification heads; ``forward``
    returns the summed pre-training losses. The ITM head is trained in fine-tuning only."""

    config_class = VLBertConfig
    collator = VLBertCollator
    pretrains_on_mismatches: ClassVar[bool] = False

    def __init__(self, config: VLBertConfig) -> None:
        super().__init__(config, VLBertModel(config))
        self.region_head = nn.Sequential(
            BertPredictionHeadTransform(config), nn.Linear(config.hidden_size, config.visual_words)
        )
        self.post_init()

    @classmethod
    def pretraining_collator(cls, config: VLBertConfig, context: PretrainingContext) -> VLBertCollator:
        return cls.collator(config, context.tokenizer.mask_token_id, context.codebook(config.visual_words))

    def region_class_loss(self, patches: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy and accuracy of the visual word predicted at the labelled patches only."""
        where = labels != -100
        if not where.any():
            zero = patches.sum() * 0
            return zero, zero.detach()
        logits = self.region_head(patches[where]).float()
        target = labels[where]
        return F.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        patch_features: torch.Tensor,
        patch_locations: torch.Tensor,
        mlm_labels: torch.Tensor,
        patch_labels: torch.Tensor,
    ) -> VLPreTrainingOutput:
        out = self.vl(input_ids, attention_mask, patch_features, patch_locations)
        text_len = input_ids.shape[1]
        mlm_loss, mlm_acc = self.masked_lm_loss(out.last_hidden_state[:, :text_len], mlm_labels)
        mrc_loss, mrc_acc = self.region_class_loss(out.last_hidden_state[:, text_len:], patch_labels)
        return VLPreTrainingOutput(
            loss=mlm_loss + mrc_loss,
            losses={"mlm_loss": mlm_loss, "mrc_loss": mrc_loss},
            accuracies={"mlm_acc": mlm_acc, "mrc_acc": mrc_acc},
        )
