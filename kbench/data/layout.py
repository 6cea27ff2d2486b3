"""The Fashion-Gen HDF5 layout: file names, keys, shapes and dtypes, checked on read and used on write.

The official release (``fashiongen_256_256_{train,validation}.h5``) stores one row per image: the image as
``(N, 256, 256, 3) uint8`` and every text field as an ``(N, 1)`` byte string in ISO-8859-1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import h5py
import numpy as np

from kbench.core.errors import KbenchError

TRAIN_FILE = "fashiongen_256_256_train.h5"
TEST_FILE = "fashiongen_256_256_validation.h5"
ENCODING = "iso-8859-1"
IMAGE_SIZE = 256

IMAGE_KEY = "input_image"
PRODUCT_KEY = "input_productID"
TEXT_KEYS = (
    "input_description",
    "input_concat_description",
    "input_name",
    "input_category",
    "input_subcategory",
    "input_pose",
    "input_brand",
    "input_composition",
    "input_department",
    "input_gender",
    "input_season",
)
REQUIRED_TEXT_KEYS = ("input_description", "input_category", "input_subcategory")


def check_layout(f: h5py.File, path: Path) -> int:
    """Check the keys kbench reads against the official layout; return the number of rows."""
    for key in (IMAGE_KEY, PRODUCT_KEY, *REQUIRED_TEXT_KEYS):
        if key not in f:
            raise KbenchError(f"{path}: missing key {key!r} (not a Fashion-Gen HDF5 file?)")
    images = f[IMAGE_KEY]
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise KbenchError(
            f"{path}: {IMAGE_KEY} has shape {images.shape} and dtype {images.dtype}; expected (N, H, W, 3) uint8"
        )
    n = images.shape[0]
    if n == 0:
        raise KbenchError(f"{path}: {IMAGE_KEY} holds no rows")
    ids = f[PRODUCT_KEY]
    if ids.shape != (n, 1) or ids.dtype.kind not in "iu":
        raise KbenchError(
            f"{path}: {PRODUCT_KEY} has shape {ids.shape} and dtype {ids.dtype}; expected ({n}, 1) integer"
        )
    for key in (*REQUIRED_TEXT_KEYS, *(k for k in TEXT_KEYS if k in f and k not in REQUIRED_TEXT_KEYS)):
        ds = f[key]
        if ds.shape != (n, 1) or ds.dtype.kind not in "SO":
            raise KbenchError(
                f"{path}: {key} has shape {ds.shape} and dtype {ds.dtype}; expected ({n}, 1) byte strings"
            )
    return n


def decode(values: np.ndarray) -> list[str]:
    """Decode an ``(N, 1)`` byte-string column into clean, single-spaced Python strings."""
    out = []
    for v in values.reshape(-1):
        text = v.decode(ENCODING) if isinstance(v, bytes) else str(v)
        out.append(" ".join(text.split()))
    return out


def encode(texts: Sequence[str]) -> np.ndarray:
    """An ``(N, 1)`` fixed-length byte-string column, as the official files store text."""
    raw = [t.encode(ENCODING, errors="replace") for t in texts]
    width = max(1, max((len(r) for r in raw), default=1))
    return np.array(raw, dtype=f"S{width}").reshape(-1, 1)


def write_split(
    path: Path | BinaryIO,
    image_batches: Iterable[np.ndarray],
    product_ids: Sequence[int],
    text: Mapping[str, Sequence[str]],
    extra: Mapping[str, np.ndarray] | None = None,
    image_size: int = IMAGE_SIZE,
) -> None:
    """Write one split in the official layout to a file or a file object, streaming images batch by batch (every
    text key present).

    ``extra`` keys are written as given; the official reader ignores them.
    """
    n = len(product_ids)
    with h5py.File(path, "w") as f:
        images = f.create_dataset(
            IMAGE_KEY,
            shape=(n, image_size, image_size, 3),
            dtype=np.uint8,
            chunks=(1, image_size, image_size, 3),
            compression="gzip",
            compression_opts=4,
        )
        start = 0
        for batch in image_batches:
            images[start : start + len(batch)] = batch
            start += len(batch)
        if start != n:
            raise ValueError(f"wrote {start} images for {n} rows")
        f.create_dataset(PRODUCT_KEY, data=np.asarray(product_ids, dtype=np.int32).reshape(n, 1))
        for key in TEXT_KEYS:
            f.create_dataset(key, data=encode(text.get(key, [""] * n)))
        f.create_dataset("input_msrpUSD", data=np.zeros((n, 1), dtype=np.float32))
        f.create_dataset("index", data=np.arange(n, dtype=np.int64).reshape(n, 1))
        f.create_dataset("index_2", data=np.arange(n, dtype=np.int64))
        for key, value in (extra or {}).items():
            f.create_dataset(key, data=value)
