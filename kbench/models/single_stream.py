"""The single-stream shape shared by FashionBERT, VL-BERT, ImageBERT and Kaleido-BERT.

Text embeddings and patch embeddings are concatenated, ``[text tokens | patches]``, and run through one
BERT encoder, as transformers' VisualBERT does. Entries differ in their patch embeddings and objectives.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.bert.modeling_bert import BertEmbeddings, BertEncoder, BertOnlyMLMHead, BertPooler

from kbench.models.base import VLPreTrainedModel


class SingleStreamModel(VLPreTrainedModel):
    """Bare single-stream model: subclasses set ``self.patch_embeddings`` (features, locations -> (B, K, H))."""

    patch_embeddings: nn.Module

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        patch_features: torch.Tensor,
        patch_locations: torch.Tensor,
    ) -> BaseModelOutputWithPooling:
        text = self.embeddings(input_ids=input_ids)
        patches = self.patch_embeddings(patch_features, patch_locations)
        hidden = torch.cat([text, patches], dim=1)
        patch_mask = attention_mask.new_ones(patches.shape[:2])  # patches are never padded
        mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=torch.cat([attention_mask, patch_mask], dim=1),
        )
        sequence = self.encoder(hidden, attention_mask=mask).last_hidden_state
        return BaseModelOutputWithPooling(last_hidden_state=sequence, pooler_output=self.pooler(sequence))


class SingleStreamForPreTraining(VLPreTrainedModel):
    """A single-stream model with BERT's tied MLM head and a 2-way ITM head; subclasses add their objectives."""

    _tied_weights_keys: ClassVar[dict[str, str]] = {
        "mlm_head.predictions.decoder.weight": "vl.embeddings.word_embeddings.weight",
        "mlm_head.predictions.decoder.bias": "mlm_head.predictions.bias",
    }

    def __init__(self, config: BertConfig, bare: SingleStreamModel) -> None:
        super().__init__(config)
        self.vl = bare
        self.mlm_head = BertOnlyMLMHead(config)
        self.itm_head = nn.Linear(config.hidden_size, 2)

    def get_output_embeddings(self) -> nn.Linear:
        return self.mlm_head.predictions.decoder

    def pooled_output(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.vl(**inputs).pooler_output

    def itm_logits(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.itm_from_pooled(self.vl(**inputs).pooler_output)

    def itm_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, 2) ITM logits from the pooled output."""
        return self.itm_head(pooled)

    def mlm_logits(self, where: torch.Tensor | None = None, **inputs: torch.Tensor) -> torch.Tensor:
        text = self.vl(**inputs).last_hidden_state[:, : inputs["input_ids"].shape[1]]
        return self.mlm_head(text if where is None else text[where])

    def load_bert_weights(self, bert: BertModel) -> None:
        self.vl.embeddings.load_state_dict(bert.embeddings.state_dict())
        self.vl.encoder.load_state_dict(bert.encoder.state_dict())
        self.vl.pooler.load_state_dict(bert.pooler.state_dict())

    def masked_lm_loss(self, text_hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy and accuracy of the MLM head, computed at the labelled positions only."""
        where = labels != -100
        if not where.any():
            zero = text_hidden.sum() * 0
            return zero, zero.detach()
        logits = self.mlm_head(text_hidden[where])
        target = labels[where]
        return F.cross_entropy(logits.float(), target), (logits.argmax(-1) == target).float().mean()

    def itm_loss(self, pooled: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """2-way cross-entropy and accuracy of the ITM head."""
        logits = self.itm_from_pooled(pooled).float()
        return F.cross_entropy(logits, labels), (logits.argmax(-1) == labels).float().mean()
