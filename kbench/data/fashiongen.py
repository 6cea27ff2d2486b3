"""Reader of the Fashion-Gen HDF5 release (and of anything written in its layout, SynthFashion included)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from kbench.core.config import DataConfig
from kbench.core.config import digest as digest_parts
from kbench.core.errors import KbenchError
from kbench.data.layout import IMAGE_KEY, PRODUCT_KEY, TEST_FILE, TRAIN_FILE, check_layout, decode
from kbench.data.source import DataSource
from kbench.data.splits import DatasetSplits, Split, carve_dev

log = logging.getLogger(__name__)

_FINGERPRINT_IMAGES = 16


class FashionGen(DataSource):
    """Fashion-Gen 256x256 HDF5 release: --data-dir holds fashiongen_256_256_{train,validation}.h5."""

    def locate(self, cfg: DataConfig) -> Path:
        if not cfg.data_dir:
            raise KbenchError("--dataset fashiongen needs --data-dir DIR holding the two Fashion-Gen HDF5 files")
        return Path(cfg.data_dir)


def read_splits(data_dir: Path, cfg: DataConfig, name: str) -> DatasetSplits:
    """Read both files of ``data_dir``, carve the dev split and fingerprint the data."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise KbenchError(f"data directory {data_dir} does not exist")
    train = _read_split(data_dir / TRAIN_FILE, "train")
    test = _read_split(data_dir / TEST_FILE, "test")
    if cfg.limit is not None:
        train, test = first_products(train, cfg.limit), first_products(test, cfg.limit)
        log.info(
            "%s: limited to the first %d products: %d train, %d test images", name, cfg.limit, len(train), len(test)
        )
    train, dev = carve_dev(train, cfg.dev_fraction, cfg.dev_seed)
    categories = sorted(set(train.meta["category"]) | set(dev.meta["category"]))
    subcategories = sorted(set(train.meta["subcategory"]) | set(dev.meta["subcategory"]))
    unseen = ~test.meta["subcategory"].isin(subcategories)
    if unseen.any():
        log.info(
            "%s: %d test images (%d sub-categories) have a sub-category unseen in training (errors in SUB)",
            name,
            int(unseen.sum()),
            test.meta.loc[unseen, "subcategory"].nunique(),
        )
    fingerprint = digest_parts(train.file_fingerprint, test.file_fingerprint, *([cfg.limit] if cfg.limit else []))
    return DatasetSplits(name, train, dev, test, fingerprint, categories, subcategories)


def first_products(split: Split, limit: int) -> Split:
    """The examples of the first ``limit`` products of ``split``, in file order."""
    keep = list(split.product_groups().values())[:limit]
    return split.subset(np.sort(np.concatenate(keep)), split.name) if keep else split


def _read_split(path: Path, name: str) -> Split:
    """Read the metadata of one file, fingerprint it (metadata and a sample of images) and drop empty texts."""
    if not path.is_file():
        raise KbenchError(f"missing data file {path}")
    digest = hashlib.sha256()
    try:
        with h5py.File(path, "r") as f:
            n = check_layout(f, path)
            meta = pd.DataFrame(
                {
                    "row": np.arange(n),
                    "product_id": f[PRODUCT_KEY][:, 0].astype(np.int64),
                    "description": decode(f["input_description"][:]),
                    "category": decode(f["input_category"][:]),
                    "subcategory": decode(f["input_subcategory"][:]),
                    "pose": decode(f["input_pose"][:]) if "input_pose" in f else [""] * n,
                }
            )
            sample = np.linspace(0, n - 1, num=min(n, _FINGERPRINT_IMAGES)).astype(int)
            digest.update(f[IMAGE_KEY][np.unique(sample)].tobytes())
    except OSError as exc:
        raise KbenchError(f"cannot read {path}: {exc}") from None
    for column in ("product_id", "description", "category", "subcategory", "pose"):
        digest.update("\x1f".join(map(str, meta[column])).encode())
    fingerprint = digest.hexdigest()[:16]
    empty = meta["description"] == ""
    if empty.any():
        log.info("%s: dropped %d of %d images with an empty description", path.name, int(empty.sum()), n)
        meta = meta[~empty].reset_index(drop=True)
    return Split(name, path, meta, fingerprint)
