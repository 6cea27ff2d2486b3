"""What Kaleido-BERT's pre-training needs besides the features: locked boxes and AAG alignments, both measured.

On SynthFashion the generator recorded each garment's box and each described attribute's region, so the
saliency lock is scored by IoU (``kpg/…``) and the alignments by the precision and recall of their cells
(``aag/…``); on the real Fashion-Gen files neither ground truth exists and only the counts are logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import h5py
import numpy as np

from kbench.data.layout import IMAGE_KEY
from kbench.data.splits import Split
from kbench.models.context import PretrainingContext
from kbench.models.kaleido.aag import (
    Alignments,
    alignment_config,
    load_alignments,
    read_regions,
    score_alignments,
)
from kbench.models.kaleido.saliency import score_boxes

if TYPE_CHECKING:
    from kbench.models.kaleido.model import KaleidoBertConfig

GARMENT_BOX_KEY = "synth_garment_box"
ALIGNMENTS = "aag"  # the alignments' key in the context's cache


def alignment_levels(context: PretrainingContext) -> tuple[int, ...]:
    """The grids AAG aligns words to: the levels AGM masks (3x3 and finer)."""
    return tuple(n for n in context.patching.scheme.levels if n >= 3)


def alignments(config: KaleidoBertConfig, context: PretrainingContext) -> Alignments:
    """The AAG alignments of the training split, made once per trial (and cached on disk across trials) with the
    model's ``aag`` settings."""

    def make() -> Alignments:
        train = context.data("train")
        cfg = context.config
        return load_alignments(
            train.split,
            train.features.example_boxes(),
            train.features.name,
            alignment_levels(context),
            cfg.features.encoder,
            cfg.features.weights,
            alignment_config(config.aag),
            context.device,
            context.seed,
            cfg.runtime.loader_workers,
        )

    return context.cached(ALIGNMENTS, make)


def prepare(config: KaleidoBertConfig, context: PretrainingContext) -> dict[str, float]:
    """Make the alignments and measure the saliency lock and the alignments where ground truth exists."""
    train = context.data("train")
    boxes = train.features.example_boxes()
    metrics: dict[str, float] = {}
    truth = garment_boxes(train.split)
    if context.patching.detector is not None and truth is not None:
        metrics |= {f"kpg/{k}": v for k, v in score_boxes(boxes, truth, size=image_size(train.split)).items()}
    aligned = alignments(config, context)
    metrics["aag/words_per_image"] = float(np.mean([len({word for word, _, _ in p}) for p in aligned.pairs]))
    if aligned.history:
        metrics["aag/caption_loss"] = aligned.history[-1]["loss"]
    regions = read_regions(train.split)
    if regions is not None:
        scores = score_alignments(aligned, boxes, regions, alignment_levels(context))
        metrics |= {f"aag/{k}": v for k, v in scores.items()}
    return metrics


def image_size(split: Split) -> tuple[int, int]:
    """``(width, height)`` of the split's images."""
    with h5py.File(split.path, "r") as f:
        height, width = f[IMAGE_KEY].shape[1:3]
    return int(width), int(height)


def garment_boxes(split: Split) -> np.ndarray | None:
    """SynthFashion's true garment box of each example, None when the file does not record them."""
    with h5py.File(split.path, "r") as f:
        if GARMENT_BOX_KEY not in f:
            return None
        boxes = f[GARMENT_BOX_KEY][:]
    return boxes[split.meta["row"].to_numpy()].astype(np.int64)
