"""Splits of a Fashion-Gen-layout dataset: metadata in memory, pixels read lazily from the HDF5 file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from kbench.data.layout import IMAGE_KEY


def read_rows(images: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``images[rows]``, read as slices of consecutive rows (h5py's point selection is some 20x slower)."""
    unique, inverse = np.unique(rows, return_inverse=True)
    runs = np.split(unique, np.flatnonzero(np.diff(unique) != 1) + 1)
    return np.concatenate([images[run[0] : run[-1] + 1] for run in runs])[inverse]


@dataclass
class Split:
    """The examples of one split, one per image row.

    ``meta`` has the columns ``row`` (row in the HDF5 file), ``product_id``, ``description``, ``category``,
    ``subcategory`` and ``pose``. Images are never loaded whole: ``read_images`` reads the rows asked for.
    """

    name: str
    path: Path
    meta: pd.DataFrame
    file_fingerprint: str  # of the whole HDF5 file the rows come from

    def __len__(self) -> int:
        return len(self.meta)

    def read_images(self, positions: np.ndarray) -> np.ndarray:
        """The ``(len(positions), H, W, 3)`` uint8 images of the examples at ``positions``."""
        with h5py.File(self.path, "r") as f:
            return read_rows(f[IMAGE_KEY], self.meta["row"].to_numpy()[np.asarray(positions)])

    def subset(self, positions: np.ndarray, name: str) -> Split:
        meta = self.meta.iloc[np.asarray(positions)].reset_index(drop=True)
        return Split(name, self.path, meta, self.file_fingerprint)

    def product_groups(self) -> dict[int, np.ndarray]:
        """Example positions of each product, products in order of first appearance."""
        ids = self.meta["product_id"].to_numpy()
        order: dict[int, list[int]] = {}
        for pos, pid in enumerate(ids):
            order.setdefault(int(pid), []).append(pos)
        return {pid: np.asarray(p) for pid, p in order.items()}


@dataclass
class DatasetSplits:
    """Train, dev (carved from train) and test (the official validation file) of one dataset."""

    name: str
    train: Split
    dev: Split
    test: Split
    fingerprint: str
    categories: list[str]  # the training label space, sorted
    subcategories: list[str]


def carve_dev(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Move a seeded ``fraction`` of the training products (all their images) into a dev split."""
    pids = np.asarray(list(train.product_groups()))
    rng = np.random.default_rng(seed)
    n_dev = round(len(pids) * fraction)
    dev_ids = set(rng.choice(pids, size=n_dev, replace=False).tolist()) if n_dev else set()
    is_dev = train.meta["product_id"].isin(dev_ids).to_numpy()
    return train.subset(np.flatnonzero(~is_dev), "train"), train.subset(np.flatnonzero(is_dev), "dev")
