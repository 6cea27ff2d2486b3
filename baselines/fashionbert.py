"""FashionBERT-style model (Gao et al., SIGIR 2020, "FashionBERT: Text and Image Matching with Adaptive Loss").

Single stream ``[text | 8x8 = 64 patches of the whole image]`` on BERT blocks, pre-trained with masked
language modelling (MLM), image-text matching (ITM, negatives from other products) and masked patch feature
modelling (MPFC: masked patch features zeroed, their feature distribution recovered under a KL objective),
combined with FashionBERT's adaptive loss weights, as in the paper's FashionBERT row and its released code
(``adaptive_loss=false`` sums them plainly instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertConfig

from kbench.models.api import (
    SingleStreamForPreTraining,
    SingleStreamModel,
    VLPreTrainingOutput,
    adaptive_weights,
    feature_kl,
    mask_pairs,
    register_model,
)


class FashionBertConfig(BertConfig):
    """BERT's configuration plus the image side and the pre-training options of FashionBERT.

    Args:
        visual_feature_size: dimension of one patch feature (2048 for ResNet-50).
        patch_scheme: how images are cut into patches; FashionBERT uses an 8x8 grid (``grid-8``).
        patch_mask_probability: share of patches masked for MPFC (FashionBERT: 10 %).
        mlm_probability: share of text tokens masked for MLM (BERT: 15 %).
        adaptive_loss: weight MLM, ITM and MPFC with FashionBERT's adaptive loss (its paper and code), not a plain sum.
        **kwargs: ``BertConfig`` arguments (sizes, dropout, vocabulary); defaults build BERT-base.
    """

    model_type = "kbench-fashionbert"

    def __init__(
        self,
        visual_feature_size: int = 2048,
        patch_scheme: str = "grid-8",
        patch_mask_probability: float = 0.1,
        mlm_probability: float = 0.15,
        adaptive_loss: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.visual_feature_size = visual_feature_size
        self.patch_scheme = patch_scheme
        self.patch_mask_probability = patch_mask_probability
        self.mlm_probability = mlm_probability
        self.adaptive_loss = adaptive_loss


class FashionBertPatchEmbeddings(nn.Module):
    """Patch feature and 5-d location projected to the hidden size, plus a learned image type, then LayerNorm."""

    def __init__(self, config: FashionBertConfig) -> None:
        super().__init__()
        self.feature_projection = nn.Linear(config.visual_feature_size, config.hidden_size)
        self.location_projection = nn.Linear(5, config.hidden_size)
        self.type_embedding = nn.Embedding(1, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, features: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        x = self.feature_projection(features) + self.location_projection(locations) + self.type_embedding.weight[0]
        return self.dropout(self.LayerNorm(x))


class FashionBertModel(SingleStreamModel):
    """The bare FashionBERT encoder: ``[text | patches]`` -> hidden states and pooled [CLS]."""

    config_class = FashionBertConfig

    def __init__(self, config: FashionBertConfig) -> None:
        super().__init__(config)
        self.patch_embeddings = FashionBertPatchEmbeddings(config)
        self.post_init()


@dataclass
class FashionBertCollator:
    """Adds FashionBERT's pre-training targets to a batch of (possibly mismatched) image-text pairs.

    Every pair is corrupted alike, so corruption says nothing about the ITM label; the MLM and MPFC losses
    are taken on matched pairs only, since a mismatched text does not describe the image.
    """

    config: FashionBertConfig
    mask_token_id: int

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        matched, masked = mask_pairs(batch, self.config, self.mask_token_id, generator)
        patches = batch["patch_features"]
        batch["patch_targets"] = patches
        batch["patch_features"] = patches.masked_fill(masked[..., None], 0.0)
        batch["patch_mask"] = masked & matched
        return batch


@register_model(
    "fashionbert",
    description="FashionBERT-style single stream [text | 8x8 patches]: MLM, ITM, masked patch feature KL,"
    " weighted by FashionBERT's adaptive loss",
)
class FashionBertForPreTraining(SingleStreamForPreTraining):
    """FashionBERT with its MLM, ITM and MPFC heads; ``forward`` returns the pre-training losses."""

    config_class = FashionBertConfig
    collator = FashionBertCollator

    def __init__(self, config: FashionBertConfig) -> None:
        super().__init__(config, FashionBertModel(config))
        self.mpfc_head = nn.Linear(config.hidden_size, config.visual_feature_size)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        patch_features: torch.Tensor,
        patch_locations: torch.Tensor,
        mlm_labels: torch.Tensor,
        itm_labels: torch.Tensor,
        patch_mask: torch.Tensor,
        patch_targets: torch.Tensor,
    ) -> VLPreTrainingOutput:
        out = self.vl(input_ids, attention_mask, patch_features, patch_locations)
        text_len = input_ids.shape[1]
        mlm_loss, mlm_acc = self.masked_lm_loss(out.last_hidden_state[:, :text_len], mlm_labels)
        itm_loss, itm_acc = self.itm_loss(out.pooler_output, itm_labels)
        patches = out.last_hidden_state[:, text_len:]
        if patch_mask.any():
            mpfc_loss = feature_kl(self.mpfc_head(patches[patch_mask]), patch_targets[patch_mask])
        else:
            mpfc_loss = patches.sum() * 0
        losses = {"mlm_loss": mlm_loss, "itm_loss": itm_loss, "mpfc_loss": mpfc_loss}
        stacked = torch.stack(list(losses.values()))
        weights = adaptive_weights(stacked) if self.config.adaptive_loss else torch.ones_like(stacked)
        return VLPreTrainingOutput(
            loss=(weights * stacked).sum(), losses=losses, accuracies={"mlm_acc": mlm_acc, "itm_acc": itm_acc}
        )
