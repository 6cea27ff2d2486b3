"""Box detectors: what finds the object of each image that a patching cuts its grids over instead of the image.

A zoo entry puts one in its ``Patching`` (Kaleido-BERT locks the garment with a salient-object detector);
extraction calls it on each batch of raw images and stores the boxes beside the patch features.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class BoxDetector(ABC):
    """Finds the main object of each image and returns its pixel box.

    ``name`` is part of the feature store's key, so it must name the detector stably (its registered name, say);
    detectors compare equal by class and name. A detector is sent to extraction workers with the patching, so one
    that loads weights should load them on its first ``boxes`` call."""

    name: str = ""

    @abstractmethod
    def boxes(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 images -> (B, 4) int64 boxes [x1, y1, x2, y2], exclusive ends, inside the image."""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.name == self.name

    def __hash__(self) -> int:
        return hash((type(self), self.name))
