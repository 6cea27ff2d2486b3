"""ViLBERT (Lu, Batra, Parikh and Lee, NeurIPS 2019, "ViLBERT: Pretraining Task-Agnostic Visiolinguistic
Representations for Vision-and-Language Tasks"): a two-stream model joined by co-attentional transformer layers.

The text stream is BERT; the visual stream embeds the image regions (feature plus 5-d location, after an [IMG]
token whose feature is the mean region, as ViLBERT's image token). As in ViLBERT, the co-attentional layers
(Co-TRM) sit under the last text layers, and each is followed by a TRM block in both streams: the next BERT
layer for the text, a new self-attention layer for the image. The joint representation is the element-wise
product of the pooled [CLS] and [IMG]. Pre-training sums ViLBERT's two objectives: masked multi-modal modelling
(BERT's masked language modelling on 15 % of the words, and masked region modelling on 15 % of the regions,
90 % of them zeroed, predicting the region's class distribution under KL) and multi-modal alignment prediction
(matched or not, from the joint representation).

kbench's adaptation: no detector runs offline, so regions are the 8x8 grid patches of the whole image and the
detector's class distribution of a region becomes the codebook's soft assignment of the patch's feature to
``visual_words`` k-means visual words (``kbench.features.codebook``). ViLBERT's visual stream is 1024 wide with 1024-d
ReLU poolers; here both streams have the text's hidden size and BERT's tanh pooler, for simplicity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import (
    BertAttention,
    BertEmbeddings,
    BertEncoder,
    BertIntermediate,
    BertLayer,
    BertOutput,
    BertPooler,
    BertPredictionHeadTransform,
)
from transformers.utils import ModelOutput

from kbench.models.api import (
    Codebook,
    KbenchError,
    PretrainingContext,
    SingleStreamForPreTraining,
    VLPreTrainedModel,
    VLPreTrainingOutput,
    mask_pairs,
    register_model,
)

REGION_ZERO_SHARE = 0.9  # ViLBERT zeroes 90 % of the masked regions' features and leaves 10 % unaltered
WHOLE_IMAGE = (
    0.0,
    1.0,
    0.0,
    1.0,
    1.0,
)  # [IMG]'s location, in kbench.features.patches order: x1, x2, y1, y2, area


class ViLBertConfig(BertConfig):
    """BERT's configuration (the text stream) plus ViLBERT's visual stream, co-attention and pre-training options.

    Args:
        visual_feature_size: dimension of one patch feature (2048 for ResNet-50).
        patch_scheme: how images are cut into patches, the stand-in for detector regions (``grid-8``).
        co_attention_layers: number of co-attentional layers, placed under the last text layers (ViLBERT: 6 of 12,
            which the paper profile sets; 1 keeps the same half of the CPU profiles' 2 layers).
        mlm_probability: share of words masked for masked language modelling (ViLBERT: 15 %).
        patch_mask_probability: share of patches masked for masked region modelling (ViLBERT: 15 %).
        visual_words: codebook size, the stand-in for the detector's classes (ViLBERT: Visual Genome's 1601).
        **kwargs: ``BertConfig`` arguments (sizes, dropout, vocabulary); defaults build BERT-base.
    """

    model_type = "kbench-vilbert"

    def __init__(
        self,
        visual_feature_size: int = 2048,
        patch_scheme: str = "grid-8",
        co_attention_layers: int = 1,
        mlm_probability: float = 0.15,
        patch_mask_probability: float = 0.15,
        visual_words: int = 64,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 1 <= co_attention_layers <= self.num_hidden_layers:
            raise KbenchError(
                f"co_attention_layers must be between 1 and num_hidden_layers ({self.num_hidden_layers}),"
                f" not {co_attention_layers}"
            )
        self.visual_feature_size = visual_feature_size
        self.patch_scheme = patch_scheme
        self.co_attention_layers = co_attention_layers
        self.mlm_probability = mlm_probability
        self.patch_mask_probability = patch_mask_probability
        self.visual_words = visual_words


@dataclass
class ViLBertModelOutput(ModelOutput):
    """Both streams' final states (the image's start with [IMG]) and the joint pooled representation."""

    text_hidden_state: torch.Tensor | None = None
    image_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None


class ViLBertPatchEmbeddings(nn.Module):
    """[IMG] token then patches: feature and 5-d location projected and summed, then LayerNorm, as ViLBERT's
    image embeddings. The [IMG] token has the mean patch feature, the whole image's location and a learned
    embedding of its own."""

    def __init__(self, config: ViLBertConfig) -> None:
        super().__init__()
        self.feature_projection = nn.Linear(config.visual_feature_size, config.hidden_size)
        self.location_projection = nn.Linear(5, config.hidden_size)
        self.image_token = nn.Embedding(1, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, features: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        whole = locations.new_tensor(WHOLE_IMAGE)
        token = self.feature_projection(features.mean(dim=1)) + self.location_projection(whole)
        token = token + self.image_token.weight[0]
        patches = self.feature_projection(features) + self.location_projection(locations)
        return self.dropout(self.LayerNorm(torch.cat([token[:, None], patches], dim=1)))


class ViLBertCoAttentionLayer(nn.Module):
    """ViLBERT's Co-TRM: each stream's queries attend over the other stream's keys and values (both taken from
    the layer's inputs), with residual and LayerNorm, then each stream's own feed-forward."""

    def __init__(self, config: ViLBertConfig) -> None:
        super().__init__()
        self.text_attention = BertAttention(config, is_cross_attention=True)
        self.text_intermediate = BertIntermediate(config)
        self.text_output = BertOutput(config)
        self.image_attention = BertAttention(config, is_cross_attention=True)
        self.image_intermediate = BertIntermediate(config)
        self.image_output = BertOutput(config)

    def forward(
        self, text: torch.Tensor, image: torch.Tensor, text_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``text_mask`` hides the text padding from the image queries; image positions are never padded."""
        text_attended, _ = self.text_attention(text, encoder_hidden_states=image)
        image_attended, _ = self.image_attention(image, encoder_hidden_states=text, encoder_attention_mask=text_mask)
        text = self.text_output(self.text_intermediate(text_attended), text_attended)
        image = self.image_output(self.image_intermediate(image_attended), image_attended)
        return text, image


class ViLBertModel(VLPreTrainedModel):
    """The bare two-stream encoder: BERT's text layers with ``co_attention_layers`` Co-TRM + TRM blocks under the
    last of them, the image stream beside them, and the product of the pooled [CLS] and [IMG]."""

    config_class = ViLBertConfig

    def __init__(self, config: ViLBertConfig) -> None:
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.patch_embeddings = ViLBertPatchEmbeddings(config)
        self.co_attention = nn.ModuleList(ViLBertCoAttentionLayer(config) for _ in range(config.co_attention_layers))
        self.image_layers = nn.ModuleList(BertLayer(config) for _ in range(config.co_attention_layers))
        self.image_pooler = BertPooler(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        patch_features: torch.Tensor,
        patch_locations: torch.Tensor,
    ) -> ViLBertModelOutput:
        text = self.embeddings(input_ids=input_ids)
        image = self.patch_embeddings(patch_features, patch_locations)
        self_mask = create_bidirectional_mask(config=self.config, inputs_embeds=text, attention_mask=attention_mask)
        cross_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=image, attention_mask=attention_mask, encoder_hidden_states=text
        )
        first_joint = len(self.encoder.layer) - len(self.co_attention)
        for layer in self.encoder.layer[:first_joint]:
            text = layer(text, self_mask)
        joint = zip(self.co_attention, self.encoder.layer[first_joint:], self.image_layers, strict=True)
        for co_attention, text_layer, image_layer in joint:
            text, image = co_attention(text, image, cross_mask)
            text, image = text_layer(text, self_mask), image_layer(image)
        pooled = self.pooler(text) * self.image_pooler(image)
        return ViLBertModelOutput(text_hidden_state=text, image_hidden_state=image, pooler_output=pooled)


@dataclass
class ViLBertCollator:
    """Adds ViLBERT's masked multi-modal modelling targets to a batch of (possibly mismatched) image-text pairs.

    Every pair is corrupted alike, so corruption says nothing about the alignment label; the masked word and
    region losses are taken on matched pairs only, since a mismatched text does not describe the image.
    ``region_targets`` are the codebook's soft assignments of the original patch features.
    """

    config: ViLBertConfig
    mask_token_id: int
    codebook: Codebook

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        matched, masked = mask_pairs(batch, self.config, self.mask_token_id, generator)
        patches = batch["patch_features"]
        zeroed = masked & (torch.rand(masked.shape, generator=generator) < REGION_ZERO_SHARE)
        batch["region_targets"] = self.codebook.distribution(patches)
        batch["patch_features"] = patches.masked_fill(zeroed[..., None], 0.0)
        batch["region_mask"] = masked & matched
        return batch


@register_model(
    "vilbert",
    description="ViLBERT-style two streams, BERT text | 8x8 patches after a mean-patch [IMG], joined by co-attention;"
    " joint = pooled [CLS] x [IMG]: MLM, masked region KL to codebook visual words (detector classes), ITM",
)
class ViLBertForPreTraining(SingleStreamForPreTraining):
    """ViLBERT with its masked word (tied to the embeddings), masked region and alignment heads; ``forward``
    returns the summed pre-training losses. The text MLM and ITM heads and their losses are the single-stream
    ones, applied to the text stream and to the joint pooled representation."""

    config_class = ViLBertConfig
    collator = ViLBertCollator

    def __init__(self, config: ViLBertConfig) -> None:
        super().__init__(config, ViLBertModel(config))
        self.region_head = nn.Sequential(
            BertPredictionHeadTransform(config), nn.Linear(config.hidden_size, config.visual_words)
        )
        self.post_init()

    @classmethod
    def pretraining_collator(cls, config: ViLBertConfig, context: PretrainingContext) -> ViLBertCollator:
        return cls.collator(config, context.tokenizer.mask_token_id, context.codebook(config.visual_words))

    def mlm_logits(self, where: torch.Tensor | None = None, **inputs: torch.Tensor) -> torch.Tensor:
        text = self.vl(**inputs).text_hidden_state
        return self.mlm_head(text if where is None else text[where])

    def load_bert_weights(self, bert: BertModel) -> None:
        """BERT's embeddings, its first ``num_hidden_layers`` layers and its pooler fill the text stream."""
        self.vl.embeddings.load_state_dict(bert.embeddings.state_dict())
        layers = self.vl.encoder.layer
        for ours, theirs in zip(layers, bert.encoder.layer[: len(layers)], strict=True):
            ours.load_state_dict(theirs.state_dict())
        self.vl.pooler.load_state_dict(bert.pooler.state_dict())

    def masked_region_loss(
        self, patches: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """KL(target class distribution || predicted) over the masked patches, and how often the predicted
        visual word is the target's most likely one."""
        if not mask.any():
            zero = patches.sum() * 0
            return zero, zero.detach()
        logits = self.region_head(patches[mask]).float()
        target = targets[mask]
        loss = F.kl_div(logits.log_softmax(dim=-1), target, reduction="batchmean")
        return loss, (logits.argmax(-1) == target.argmax(-1)).float().mean()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        patch_features: torch.Tensor,
        patch_locations: torch.Tensor,
        mlm_labels: torch.Tensor,
        itm_labels: torch.Tensor,
        region_mask: torch.Tensor,
        region_targets: torch.Tensor,
    ) -> VLPreTrainingOutput:
        out = self.vl(input_ids, attention_mask, patch_features, patch_locations)
        losses, accuracies = {}, {}
        losses["mlm_loss"], accuracies["mlm_acc"] = self.masked_lm_loss(out.text_hidden_state, mlm_labels)
        losses["mrm_loss"], accuracies["mrm_acc"] = self.masked_region_loss(
            out.image_hidden_state[:, 1:], region_mask, region_targets
        )
        losses["itm_loss"], accuracies["itm_acc"] = self.itm_loss(out.pooler_output, itm_labels)
        return VLPreTrainingOutput(loss=sum(losses.values()), losses=losses, accuracies=accuracies)
