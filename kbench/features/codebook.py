"""Visual word classes: k-means over the training split's patch features.

ViLBERT, VL-BERT and ImageBERT predict the object class of a masked region, as labelled by their Faster R-CNN
(Visual Genome's 1600 classes). No detector can be had offline, so kbench's versions of them predict the
patch's visual word instead: its nearest centroid among ``size`` k-means centroids of the training patches.
The centroids are fitted once per feature store and size, cached, and shared by every entry that uses them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import MiniBatchKMeans

from kbench.core.config import digest
from kbench.core.integrity import check_file, seal_file
from kbench.core.paths import atomic_path, cache_dir
from kbench.features.patch_features import PatchFeatures

log = logging.getLogger(__name__)

CODEBOOK_VERSION = 1
MAX_FIT_PATCHES = 200_000  # a seeded sample of the training patches is enough for the centroids


@dataclass
class Codebook:
    """``size`` centroids in patch feature space, and the mean squared distance of the training patches to their
    nearest centroid (the scale soft assignments are taken at)."""

    centroids: torch.Tensor  # (size, D) float32
    spread: float

    @property
    def size(self) -> int:
        return int(self.centroids.shape[0])

    def assign(self, features: torch.Tensor) -> torch.Tensor:
        """The index of the nearest centroid of each feature vector: (..., D) -> (...) long."""
        flat = features.reshape(-1, features.shape[-1]).float()
        nearest = torch.cdist(flat, self.centroids.to(flat.device)).argmin(dim=-1)
        return nearest.reshape(features.shape[:-1])

    def distribution(self, features: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """A soft assignment (..., size), the stand-in for a detector's class distribution: softmax of the negative
        squared distances in units of ``spread`` (so it is as soft for 2048-d ResNet features as for small ones),
        over ``temperature``."""
        flat = features.reshape(-1, features.shape[-1]).float()
        logits = -torch.cdist(flat, self.centroids.to(flat.device)).pow(2) / (self.spread * temperature)
        return logits.softmax(dim=-1).reshape(*features.shape[:-1], self.size)


def fit_codebook(features: np.ndarray, size: int, seed: int = 0) -> Codebook:
    """k-means (mini-batch, seeded) over ``features`` (N, D)."""
    kmeans = MiniBatchKMeans(n_clusters=size, random_state=seed, batch_size=4096, n_init=3)
    kmeans.fit(features.astype(np.float32))
    spread = max(float(kmeans.inertia_) / len(features), 1e-12)
    return Codebook(torch.from_numpy(kmeans.cluster_centers_.astype(np.float32)), spread)


def codebook(train: PatchFeatures, size: int, seed: int) -> Codebook:
    """A codebook of ``size`` visual words fitted on a seeded sample of the training patches, or read from the
    cache (keyed by the store's name, which hashes its rows)."""
    key = digest(CODEBOOK_VERSION, train.name, size, seed)
    path = cache_dir("codebooks") / f"{key}.npz"
    if path.exists():
        problem = check_file(path)
        if problem is None:
            with np.load(path) as stored:
                return Codebook(torch.from_numpy(stored["centroids"]), float(stored["spread"]))
        log.warning("cached codebook %s is damaged (%s); fitting it again", path, problem)
    rng = np.random.default_rng(seed)
    take = min(len(train), max(1, MAX_FIT_PATCHES // train.num_patches))
    positions = np.sort(rng.choice(len(train), size=take, replace=False))
    sample = train.batch(positions)[0].numpy()
    book = fit_codebook(sample.reshape(-1, sample.shape[-1]), size, seed)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, centroids=book.centroids.numpy(), spread=book.spread)
    seal_file(path)
    return book
