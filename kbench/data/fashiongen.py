"""Reader of the Fashion-Gen HDF5 release (and of anything written in its layout, SynthFashion included)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from kbench.core.config import DataConfig
from kbench.core.config import digest as digest_parts
from kbench.core.errors import KbenchError
from kbench.core.paths import atomic_path, cache_dir
from kbench.core.progress import stage
from kbench.data.layout import IMAGE_KEY, PRODUCT_KEY, TEST_FILE, TRAIN_FILE, check_layout, decode
from kbench.data.source import DataSource
from kbench.data.splits import DatasetSplits, Split, carve_dev

log = logging.getLogger(__name__)

_HASH_BLOCK_BYTES = 64 << 20  # image bytes hashed at a time, in whole HDF5 chunks


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
    """Read the metadata of one file, fingerprint it (metadata and every image) and drop empty texts."""
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
            digest.update(image_digest(path, f[IMAGE_KEY]).encode())
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


def image_digest(path: Path, images: h5py.Dataset) -> str:
    """The sha256 of every image row of ``path`` (with their shape and dtype), so that a cache keyed by the data sees
    any changed pixel. Hashing the 51 GB of the full release takes minutes, so the digest is kept in the cache per
    version of the file (its path, device, inode, size, modification and change times) and computed once each."""
    stat = path.stat()
    version = [str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    memo = cache_dir("fingerprints") / f"{digest_parts(*version)}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        known = json.loads(memo.read_text())
        if known["file"] == version and len(known["images"]) == 64:
            return str(known["images"])
    n = images.shape[0]
    row_bytes = images.dtype.itemsize * int(np.prod(images.shape[1:]))
    chunk = images.chunks[0] if images.chunks else 1
    block = chunk * max(1, _HASH_BLOCK_BYTES // (chunk * row_bytes))
    size = n * row_bytes / 1e9
    log.info("fingerprinting the %d images (%.1f GB) of %s, once per version of the file", n, size, version[0])
    content = hashlib.sha256(json.dumps([list(images.shape), images.dtype.str]).encode())
    with stage(f"fingerprint {path.name}", n) as advance:
        for start in range(0, n, block):
            rows = images[start : start + block]
            content.update(memoryview(np.ascontiguousarray(rows)).cast("B"))
            advance(len(rows))
    found = content.hexdigest()
    with contextlib.suppress(OSError), atomic_path(memo) as tmp:  # a read-only cache hashes again next time
        tmp.write_text(json.dumps({"file": version, "images": found}))
    return found
