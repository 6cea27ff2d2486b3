"""Kaleido-BERT (Zhuge et al., CVPR 2021): a single-stream BERT over ``[text | kaleido patches]``.

The patch side follows the released code: per level, the feature (after input dropout) is projected by the
level's own matrix, a learned type embedding of the level is added (the code's depth-2 one-hot left levels
2-5 without one) together with a projection of the 5-d location shared by all levels, and the sum goes
through the level's own LayerNorm. Pre-training sums AMLM, ITM and the AKPM tasks unweighted (paper Eq. 8).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig

from kbench.core.errors import KbenchError
from kbench.features.patch_features import Patching
from kbench.features.patches import KALEIDO, get_scheme
from kbench.models.base import VLPreTrainingOutput
from kbench.models.context import PretrainingContext
from kbench.models.kaleido.aag import AAG_DEFAULTS, alignment_config
from kbench.models.kaleido.agm import AGM_VARIANTS
from kbench.models.kaleido.akpm import NUM_ROTATIONS, PERMUTATIONS, TASK_LEVEL, gather_cells, parse_akpm
from kbench.models.kaleido.collator import KaleidoCollator
from kbench.models.kaleido.kpg import SCALE_FIXED_GRID, check_kpg, kpg_patching
from kbench.models.losses import feature_kl
from kbench.models.single_stream import SingleStreamForPreTraining, SingleStreamModel
from kbench.models.zoo import register_model

ITM_HEADS = ("softmax", "sigmoid")


class KaleidoBertConfig(BertConfig):
    """BERT's configuration plus Kaleido-BERT's image side and pre-training choices.

    Args:
        visual_feature_size: dimension of one patch feature (2048 for ResNet-50).
        kpg: patch generator, ``scale-fixed`` | ``kaleido`` | ``kaleido+sod`` (the paper's full model).
        saliency: the detector that locks the garment for ``kaleido+sod`` (a registered name or ``module:Class``).
        agm: ``agm`` (alignment-guided masking) or ``random`` (same budgets, no alignments).
        akpm: the pretext tasks, ``B`` (AMLM + ITM) plus AKPM tasks I..V, e.g. ``B+I~V`` (all) or ``B+V``.
        itm_head: ``softmax`` (the released code's 2-way head) or ``sigmoid`` (the paper's one logit).
        mlm_probability: share of text tokens AGM masks (BERT's 15 %).
        max_masked_tokens: most masked tokens per text (the code's 10 ``masked_lm_positions``).
        token_side_probability: chance that AGM masks the word, not the cell, of an aligned pair.
        aag: the alignment generator's settings (``AlignmentConfig``'s fields; those left out keep their defaults).
        **kwargs: ``BertConfig`` arguments (sizes, dropout, vocabulary); defaults build BERT-base.
    """

    model_type = "kbench-kaleido"

    def __init__(
        self,
        visual_feature_size: int = 2048,
        kpg: str = "kaleido+sod",
        saliency: str = "border-contrast",
        agm: str = "agm",
        akpm: str = "B+I~V",
        itm_head: str = "softmax",
        mlm_probability: float = 0.15,
        max_masked_tokens: int = 10,
        token_side_probability: float = 0.5,
        aag: Mapping[str, Any] = AAG_DEFAULTS,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_kpg(kpg)
        parse_akpm(akpm)
        if agm not in AGM_VARIANTS:
            raise KbenchError(f"unknown agm {agm!r}; use {' or '.join(AGM_VARIANTS)}")
        if itm_head not in ITM_HEADS:
            raise KbenchError(f"unknown itm_head {itm_head!r}; use {' or '.join(ITM_HEADS)}")
        self.visual_feature_size = visual_feature_size
        self.kpg = kpg
        self.saliency = saliency
        self.agm = agm
        self.akpm = akpm
        self.itm_head = itm_head
        self.mlm_probability = mlm_probability
        self.max_masked_tokens = max_masked_tokens
        self.token_side_probability = token_side_probability
        self.aag = dataclasses.asdict(alignment_config(aag))

    @property
    def patch_scheme(self) -> str:
        return SCALE_FIXED_GRID if self.kpg == "scale-fixed" else KALEIDO.name

    @property
    def pretext_tasks(self) -> tuple[str, ...]:
        """The AKPM tasks of ``akpm`` that the patch scheme has levels for (none on the scale-fixed grid)."""
        levels = get_scheme(self.patch_scheme).levels
        return tuple(t for t in parse_akpm(self.akpm) if TASK_LEVEL[t] in levels)


class KaleidoBertPatchEmbeddings(nn.Module):
    """``LayerNorm_l(W_l dropout(f) + T[l] + P loc)`` per level ``l``, then dropout (spec §1.3)."""

    def __init__(self, config: KaleidoBertConfig) -> None:
        super().__init__()
        scheme = get_scheme(config.patch_scheme)
        self.slices = scheme.level_slices()
        hidden = config.hidden_size
        self.feature_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.feature_projections = nn.ModuleList(
            nn.Linear(config.visual_feature_size, hidden, bias=False) for _ in scheme.levels
        )
        self.level_embeddings = nn.Embedding(len(scheme.levels) + 1, hidden)  # row 0 unused: levels count from 1
        self.location_projection = nn.Linear(5, hidden, bias=False)
        self.LayerNorm = nn.ModuleList(nn.LayerNorm(hidden, eps=config.layer_norm_eps) for _ in scheme.levels)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, features: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        parts = []
        for level, part in enumerate(self.slices):
            x = (
                self.feature_projections[level](self.feature_dropout(features[:, part]))
                + self.level_embeddings.weight[level + 1]
                + self.location_projection(locations[:, part])
            )
            parts.append(self.dropout(self.LayerNorm[level](x)))
        return torch.cat(parts, dim=1)


class KaleidoBertModel(SingleStreamModel):
    """The bare Kaleido-BERT encoder: ``[text | 55 kaleido patches]`` -> hidden states and pooled [CLS]."""

    config_class = KaleidoBertConfig

    def __init__(self, config: KaleidoBertConfig) -> None:
        super().__init__(config)
        self.patch_embeddings = KaleidoBertPatchEmbeddings(config)
        self.post_init()


@register_model(
    "kaleido",
    description="Kaleido-BERT: single stream [text | 55 kaleido patches of the saliency-locked garment];"
    " AMLM with alignment-guided masking, ITM, AKPM (rotation, jigsaw, camouflage, grey/blank-to-colour KL)",
)
class KaleidoBertForPreTraining(SingleStreamForPreTraining):
    """Kaleido-BERT with the AMLM, ITM and AKPM heads of spec §1.4; ``forward`` returns the pre-training losses."""

    config_class = KaleidoBertConfig

    def __init__(self, config: KaleidoBertConfig) -> None:
        super().__init__(config, KaleidoBertModel(config))
        hidden, feature = config.hidden_size, config.visual_feature_size
        if config.itm_head == "sigmoid":
            self.itm_head = nn.Linear(hidden, 1)
        tasks = config.pretext_tasks
        self.rr_head = nn.Linear(hidden, NUM_ROTATIONS) if "rr" in tasks else None
        self.jps_head = nn.Linear(4 * hidden, len(PERMUTATIONS)) if "jps" in tasks else None
        self.cp_head = nn.Linear(9 * hidden, 9) if "cp" in tasks else None
        self.g2cm_head = nn.Linear(hidden, feature, bias=False) if "g2cm" in tasks else None
        self.b2cm_head = nn.Linear(hidden, feature, bias=False) if "b2cm" in tasks else None
        self.post_init()

    @classmethod
    def patching(cls, config: KaleidoBertConfig) -> Patching:
        """KPG's patches; the training store carries the AKPM views whichever pretext tasks are on, so that the
        AKPM ablation's variants share one store (some 75 GB for Fashion-Gen's training split)."""
        return kpg_patching(config.kpg, config.saliency, akpm_views=True)

    @classmethod
    def prepare(cls, config: KaleidoBertConfig, context: PretrainingContext) -> dict[str, float]:
        from kbench.models.kaleido.preparation import prepare

        return prepare(config, context)

    @classmethod
    def pretraining_collator(cls, config: KaleidoBertConfig, context: PretrainingContext) -> KaleidoCollator:
        from kbench.models.kaleido.preparation import alignments

        return KaleidoCollator(config, context.tokenizer, context.data("train"), alignments(config, context).pairs)

    def itm_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, 2) logits; the sigmoid head's one logit ``z`` becomes ``[0, z]``, whose softmax is ``sigmoid(z)``."""
        logits = self.itm_head(pooled)
        return torch.cat([torch.zeros_like(logits), logits], dim=-1) if logits.shape[-1] == 1 else logits

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        patch_features: torch.Tensor,
        patch_locations: torch.Tensor,
        mlm_labels: torch.Tensor,
        itm_labels: torch.Tensor,
        rr_labels: torch.Tensor | None = None,
        jps_labels: torch.Tensor | None = None,
        cp_labels: torch.Tensor | None = None,
        grey_cells: torch.Tensor | None = None,
        grey_targets: torch.Tensor | None = None,
        blank_cells: torch.Tensor | None = None,
        blank_targets: torch.Tensor | None = None,
    ) -> VLPreTrainingOutput:
        out = self.vl(input_ids, attention_mask, patch_features, patch_locations)
        text_len = input_ids.shape[1]
        patches = out.last_hidden_state[:, text_len:]
        levels = self.vl.patch_embeddings.slices
        losses, accuracies = {}, {}
        losses["mlm_loss"], accuracies["mlm_acc"] = self.masked_lm_loss(
            out.last_hidden_state[:, :text_len], mlm_labels
        )
        losses["itm_loss"], accuracies["itm_acc"] = self.itm_loss(out.pooler_output, itm_labels)
        for name, head, labels in (
            ("rr", self.rr_head, rr_labels),
            ("jps", self.jps_head, jps_labels),
            ("cp", self.cp_head, cp_labels),
        ):
            if head is not None:
                logits = head(patches[:, levels[TASK_LEVEL[name] - 1]].flatten(1)).float()
                losses[f"{name}_loss"] = F.cross_entropy(logits, labels)
                accuracies[f"{name}_acc"] = (logits.argmax(-1) == labels).float().mean()
        for name, head, cells, targets in (
            ("g2cm", self.g2cm_head, grey_cells, grey_targets),
            ("b2cm", self.b2cm_head, blank_cells, blank_targets),
        ):
            if head is not None:
                hidden = gather_cells(patches[:, levels[TASK_LEVEL[name] - 1]], cells)
                losses[f"{name}_loss"] = feature_kl(head(hidden), targets)
        return VLPreTrainingOutput(loss=sum(losses.values()), losses=losses, accuracies=accuracies)
