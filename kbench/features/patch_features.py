"""Patch features: every image's patches encoded once by the frozen encoder and kept in a sharded store.

A store holds one split's examples (row ``i`` is the split's example ``i``) for one (patching, encoder), keyed
by the data file's fingerprint and the split's rows, so that a limited run (``--limit``) and the dev split get
stores of their own and nothing is extracted that no consumer reads. Each row holds the patch features, and in
the training split of an entry that declares views (Kaleido-BERT's AKPM) the views after them, so a training
batch is one read per row. ``kbench.features.extraction`` writes stores; this module names them, cuts and encodes
crops, and reads batches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kbench.core.config import FeatureConfig, digest
from kbench.core.errors import KbenchError
from kbench.core.paths import cache_dir
from kbench.data.splits import Split
from kbench.features.detectors import BoxDetector
from kbench.features.encoders import IMAGENET_MEAN, IMAGENET_STD, PatchEncoder
from kbench.features.patches import PatchScheme
from kbench.features.store import ArraySpec, ShardedStore
from kbench.features.views import View

# 3: sharded stores, one per split (2: one HDF5 file per data file, no longer read).
FEATURES_VERSION = 3
PATCHES, LOCATIONS, BOXES = "patches", "locations", "boxes"


@dataclass(frozen=True)
class Patching:
    """What a store holds: a patch scheme cut over each image's box, and the extra views it keeps after the patches.

    The box is the whole image, or the one ``detector`` finds (Kaleido-BERT's KPG locks the garment). The
    ``views`` (Kaleido-BERT's AKPM corruptions) are encoded in the order given, after each row's patches. A store's
    key records whether it has views, as it did when only AKPM's existed, not which: a store whose views differ in
    names or sizes is written anew when read, so entries that declare other views give them names of their own.
    """

    scheme: PatchScheme
    detector: BoxDetector | None = None
    views: tuple[View, ...] = ()

    def __post_init__(self) -> None:
        for view in self.views:
            if view.level not in self.scheme.levels:
                grid = f"{view.level}x{view.level}"
                raise KbenchError(f"view {view.name!r} needs the {grid} grid, which {self.scheme.name} lacks")

    @property
    def name(self) -> str:
        return self.scheme.name + ("-locked" if self.detector is not None else "")

    def for_split(self, split: str) -> Patching:
        """The patching of ``split``'s store: the views are read in pre-training only, so only train has them."""
        return self if split == "train" else dataclasses.replace(self, views=())

    def view_crops(self, crops: torch.Tensor) -> list[torch.Tensor]:
        """Each view's crops, made from ``(B, K, 3, S, S)`` crops of the scheme's cells."""
        levels = dict(zip(self.scheme.levels, self.scheme.level_slices(), strict=True))
        return [view.transform(crops[:, levels[view.level]]) for view in self.views]


def rows_digest(split: Split) -> str:
    """Hash of the file rows a split's examples come from."""
    return digest(split.meta["row"].to_numpy().tolist())


def store_root(split: Split, patching: Patching, cfg: FeatureConfig, encoder_id: str) -> Path:
    """Where the store of ``split`` under ``patching`` lives in the cache."""
    key = digest(
        FEATURES_VERSION,
        split.file_fingerprint,
        rows_digest(split),
        patching.scheme.name,
        patching.detector.name if patching.detector is not None else None,
        bool(patching.views),
        cfg.encoder,
        encoder_id,
        cfg.crop_size,
    )
    return cache_dir("features") / f"{split.path.stem}-{split.name}-{patching.name}-{cfg.encoder}-{key}"


def store_layout(
    split: Split, patching: Patching, cfg: FeatureConfig, encoder: PatchEncoder
) -> tuple[dict[str, ArraySpec], dict]:
    """The arrays of a feature store and the description its ``store.json`` records."""
    k = patching.scheme.num_patches
    views, offset = {}, k
    for view in patching.views:
        views[view.name] = [offset, offset + view.size]
        offset += view.size
    arrays = {
        PATCHES: ArraySpec((offset, encoder.out_dim), "float16"),
        LOCATIONS: ArraySpec((k, 5), "float32"),
        BOXES: ArraySpec((4,), "int32"),
    }
    info = {
        "kind": "patch features",
        "version": FEATURES_VERSION,
        "data_file": split.path.name,
        "split": split.name,
        "patching": patching.name,
        "num_patches": k,
        "views": views,
        "encoder": cfg.encoder,
        "weights": encoder.weights_id(),
        "crop_size": cfg.crop_size,
    }
    return arrays, info


class PatchFeatures:
    """Patch features, 5-d locations, boxes and AKPM views of a split's examples, read by position from a store."""

    def __init__(self, store: ShardedStore) -> None:
        self.store = store
        self.num_patches = int(store.info["num_patches"])
        self.views = {name: slice(*bounds) for name, bounds in store.info["views"].items()}

    def __len__(self) -> int:
        return self.store.rows

    @property
    def name(self) -> str:
        """The store's directory name: data file, split, patching, encoder and the hash of all of them."""
        return self.store.name

    @property
    def dim(self) -> int:
        return int(self.store.arrays[PATCHES].shape[-1])

    def batch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (b, K, D), locations (b, K, 5))`` of the examples at ``positions``.

        Features stay float16, as stored, on their way to the device: batches are built and copied at half the
        size, and ``kbench.features.batches.to_device`` makes them float32 there (the same values either way)."""
        features = self.store.read(PATCHES, positions, slice(0, self.num_patches))
        return torch.from_numpy(features), torch.from_numpy(self.store.read(LOCATIONS, positions))

    def batch_with_views(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``batch`` and every AKPM view ((b, n, D) float16), from one read of each row."""
        rows = torch.from_numpy(self.store.read(PATCHES, positions))
        views = {name: rows[:, part] for name, part in self.views.items()}
        return rows[:, : self.num_patches], torch.from_numpy(self.store.read(LOCATIONS, positions)), views

    def view(self, name: str, positions: np.ndarray) -> torch.Tensor:
        """The AKPM view ``name`` ((b, n, D) float16) of the examples at ``positions``."""
        if name not in self.views:
            raise KbenchError(f"the feature store {self.name} has no {name!r} view")
        return torch.from_numpy(self.store.read(PATCHES, positions, self.views[name]))

    def example_boxes(self, positions: np.ndarray | None = None) -> np.ndarray:
        """The ``(b, 4)`` boxes the examples at ``positions`` (all examples by default) were cut from."""
        if positions is None:
            return self.store.read_all(BOXES).astype(np.int64)
        return self.store.read(BOXES, positions).astype(np.int64)


def features_from_arrays(
    root: Path,
    features: np.ndarray,
    locations: np.ndarray,
    boxes: np.ndarray,
    views: dict[str, np.ndarray] | None = None,
    shard_rows: int = 1024,
) -> PatchFeatures:
    """A store at ``root`` written from in-memory arrays with the store's own writer (for tests and benchmarks)."""
    n, k, d = features.shape
    views = views or {}
    bounds, offset = {}, k
    for name, values in views.items():
        bounds[name] = [offset, offset + values.shape[1]]
        offset += values.shape[1]
    rows = np.concatenate([features, *views.values()], axis=1).astype(np.float16)
    arrays = {
        PATCHES: ArraySpec((offset, d), "float16"),
        LOCATIONS: ArraySpec((k, 5), "float32"),
        BOXES: ArraySpec((4,), "int32"),
    }
    store = ShardedStore.create(root, n, shard_rows, arrays, {"num_patches": k, "views": bounds})
    for shard in store.missing():
        span = store.shard_span(shard)
        part = slice(span.start, span.stop)
        with store.shard_writer(shard) as writer:
            writer.append({PATCHES: rows[part], LOCATIONS: locations[part], BOXES: boxes[part]})
    return PatchFeatures(store)


def lock(x: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """Each ``(3, H, W)`` image's box cut out and resized back to ``H x W``, so shared cells cut every box."""
    height, width = x.shape[-2:]
    return torch.cat(
        [
            F.interpolate(img[None, :, y1:y2, x1:x2], size=(height, width), mode="bilinear", antialias=True)
            for img, (x1, y1, x2, y2) in zip(x, boxes.tolist(), strict=True)
        ]
    )


def cut(x: torch.Tensor, cells: np.ndarray, crop_size: int) -> torch.Tensor:
    """``(B, K, 3, S, S)`` crops of ``(B, 3, H, W)`` images at the ``(K, 4)`` cells shared by all."""
    return torch.stack([resize(x[:, :, y1:y2, x1:x2], crop_size) for x1, y1, x2, y2 in cells.tolist()], dim=1)


def encode_crops(crops: torch.Tensor, encoder: PatchEncoder) -> torch.Tensor:
    """``(B, K, D)`` float16 features of ``(B, K, 3, S, S)`` crops with values in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=crops.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=crops.device).view(1, 1, 3, 1, 1)
    b, k = crops.shape[:2]
    with torch.inference_mode():
        return encoder(((crops - mean) / std).flatten(0, 1)).view(b, k, -1).to(torch.float16)


def encode_patches(images: torch.Tensor, boxes: np.ndarray, encoder: PatchEncoder, crop_size: int) -> torch.Tensor:
    """``(B, K, D)`` features of ``(B, H, W, 3)`` uint8 images cut into the ``(K, 4)`` boxes shared by all."""
    return encode_crops(cut(images.permute(0, 3, 1, 2).float().div_(255), boxes, crop_size), encoder)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Anti-aliased bilinear resize of ``(B, 3, h, w)`` crops to ``size x size``."""
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise KbenchError(f"empty patch crop of shape {tuple(x.shape)}: the image is too small for the patch scheme")
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
