"""Model-ready splits and the image-text pairs that batches are made of."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kbench.data.splits import Split
from kbench.data.text import TokenizedText
from kbench.features.patch_features import PatchFeatures


@dataclass
class ModelData:
    """A split ready for the models: the tokenised description and the patch features of every example."""

    split: Split
    text: TokenizedText
    features: PatchFeatures

    def __len__(self) -> int:
        return len(self.split)

    def inputs(self, image_pos: np.ndarray, text_pos: np.ndarray, views: bool = False) -> dict[str, torch.Tensor]:
        """Model inputs pairing the image of each ``image_pos`` example with the text of each ``text_pos`` one; with
        ``views``, also the AKPM views of the images (``view_rotated``, ``view_grey``), read with their features."""
        extra: dict[str, torch.Tensor] = {}
        if views:
            feats, locs, extra = self.features.batch_with_views(image_pos)
        else:
            feats, locs = self.features.batch(image_pos)
        idx = torch.from_numpy(np.asarray(text_pos))
        return {
            "input_ids": self.text.input_ids[idx],
            "attention_mask": self.text.attention_mask[idx],
            "word_ids": self.text.word_ids[idx],
            "patch_features": feats,
            "patch_locations": locs,
            **{f"view_{name}": view for name, view in extra.items()},
        }


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The four inputs every zoo entry takes."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "patch_features", "patch_locations")}


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of ``batch`` on ``device`` (asynchronously from pinned memory); the float16 patch features (and
    what collators cut from them) become float32 there."""
    moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.float() if v.dtype == torch.float16 else v for k, v in moved.items()}


class NegativeSampler:
    """Draws mismatched texts for ITM: from any other product, or (``groups`` given) from another product of
    the same group, e.g. the same sub-category (hard negatives), falling back to any other product."""

    def __init__(self, product_ids: np.ndarray, groups: np.ndarray | None = None) -> None:
        self.product_ids = product_ids
        self.groups = groups
        self.members: dict[int, np.ndarray] = {}
        if groups is not None:
            order = np.argsort(groups, kind="stable")
            keys, starts = np.unique(groups[order], return_index=True)
            self.members = {int(k): part for k, part in zip(keys, np.split(order, starts[1:]), strict=False)}

    def sample(self, positions: np.ndarray, rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(text positions, labels)`` for the images at ``positions``; a ``rate`` share become negatives."""
        text_pos = positions.copy()
        labels = np.ones(len(positions), dtype=np.int64)
        for i in np.flatnonzero(rng.random(len(positions)) < rate):
            own = self.product_ids[positions[i]]
            pool = self.members.get(int(self.groups[positions[i]])) if self.groups is not None else None
            for attempt in range(64):  # rejection sampling; the group pool first, then any product
                in_group = pool is not None and attempt < 16
                j = rng.choice(pool) if in_group else rng.integers(len(self.product_ids))
                if self.product_ids[j] != own:
                    text_pos[i], labels[i] = j, 0
                    break
        return text_pos, labels
