"""Visual words: k-means recovers separated clusters, assignments are nearest centroids, soft assignments are
distributions peaked at them, and the spread is the mean squared distance to the nearest centroid."""

from __future__ import annotations

import numpy as np
import torch

from kbench.features.codebook import fit_codebook


def clustered(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 16)) * 20
    labels = np.repeat(np.arange(5), 40)
    return centres[labels] + rng.normal(size=(200, 16)), labels


def test_kmeans_recovers_separated_clusters() -> None:
    x, labels = clustered()
    book = fit_codebook(x, 5)
    words = book.assign(torch.from_numpy(x)).numpy()
    # one visual word per cluster, whatever their numbering
    assert all(len(set(words[labels == c])) == 1 for c in range(5)) and len(set(words)) == 5


def test_assignments_spread_and_soft_assignments() -> None:
    x, _ = clustered(1)
    book = fit_codebook(x, 5)
    features = torch.from_numpy(x).float()
    distances = ((features[:, None, :] - book.centroids[None]) ** 2).sum(-1)  # brute force
    assert torch.equal(book.assign(features), distances.argmin(-1))
    assert abs(book.spread - distances.min(-1).values.mean().item()) < 1e-3 * book.spread
    soft = book.distribution(features.reshape(20, 10, 16))
    assert soft.shape == (20, 10, 5)
    torch.testing.assert_close(soft.sum(-1), torch.ones(20, 10))
    assert torch.equal(soft.reshape(200, 5).argmax(-1), distances.argmin(-1))
    expected = torch.softmax(-distances / book.spread / 2.0, dim=-1)
    torch.testing.assert_close(book.distribution(features, temperature=2.0), expected, rtol=1e-4, atol=1e-5)
