"""The feature store: every image's patches encoded once by the frozen encoder, cached on disk.

A store file covers all rows of one HDF5 data file for one (patching, encoder) and is keyed by the data
file's fingerprint, so splits carved from the file (train and dev) index into the same store. Crops are
resized and encoded in batches, never one forward pass per crop. A saliency-locked box is cut out and
resized to the image size first, so that one set of integer cell boundaries serves every image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock

from kbench.config import FeatureConfig, digest
from kbench.data.layout import IMAGE_KEY
from kbench.data.splits import Split
from kbench.encoders import IMAGENET_MEAN, IMAGENET_STD, PatchEncoder, build_encoder
from kbench.errors import KbenchError
from kbench.kaleido.saliency import build_detector
from kbench.patches import PatchScheme, locations
from kbench.paths import atomic_path, cache_dir
from kbench.progress import stage

log = logging.getLogger(__name__)

FEATURES_VERSION = 2
# Stores up to this size are read into memory; larger ones are read batch by batch from disk.
IN_MEMORY_BYTES = 8 << 30
VIEWS = ("rotated", "grey")


@dataclass(frozen=True)
class Patching:
    """What a store holds: a patch scheme cut over each image's box, and the extra views AKPM corrupts with.

    The box is the whole image, or the object a saliency detector locks (Kaleido-BERT's KPG). With
    ``akpm_views`` the store also holds the level-1 patch rotated by 90, 180 and 270 degrees and the grey
    version of every level-4 patch, so that all AKPM corruptions happen in feature space at batch time.
    """

    scheme: PatchScheme
    saliency: str | None = None
    akpm_views: bool = False

    @property
    def name(self) -> str:
        return self.scheme.name + ("-locked" if self.saliency else "")


@dataclass
class PatchFeatures:
    """Patch features, 5-d locations, boxes and AKPM views of the examples of one split, by example position."""

    features: torch.Tensor | h5py.Dataset  # (rows, K, D) float16, indexed by file row
    locations: torch.Tensor  # (rows, K, 5) float32
    boxes: np.ndarray  # (rows, 4) the box each image's patches were cut from, [x1, y1, x2, y2] in pixels
    rows: np.ndarray  # file row of each example
    store: str  # the store's file name: data file, patching, encoder and the hash of all three
    views: dict[str, torch.Tensor | h5py.Dataset] = field(default_factory=dict)  # "rotated", "grey"

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def dim(self) -> int:
        return int(self.features.shape[-1])

    def batch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (b, K, D) float32, locations (b, K, 5))`` of the examples at ``positions``."""
        rows = self.rows[np.asarray(positions)]
        return _take(self.features, rows).float(), self.locations[torch.from_numpy(rows)]

    def view(self, name: str, positions: np.ndarray) -> torch.Tensor:
        """The AKPM view ``name`` ((b, n, D) float32) of the examples at ``positions``."""
        if name not in self.views:
            raise KbenchError(f"the feature store {self.store} has no {name!r} view")
        return _take(self.views[name], self.rows[np.asarray(positions)]).float()

    def example_boxes(self, positions: np.ndarray | None = None) -> np.ndarray:
        """The ``(b, 4)`` boxes of the examples at ``positions`` (all examples by default)."""
        rows = self.rows if positions is None else self.rows[np.asarray(positions)]
        return self.boxes[rows]


def _take(data: torch.Tensor | h5py.Dataset, rows: np.ndarray) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data[torch.from_numpy(rows)]
    unique, inverse = np.unique(rows, return_inverse=True)  # h5py wants increasing indices
    return torch.from_numpy(data[unique][inverse])


def store_path(split: Split, patching: Patching, cfg: FeatureConfig, encoder_id: str) -> Path:
    """Where the store of ``split``'s data file lives in the cache."""
    key = digest(
        FEATURES_VERSION,
        split.file_fingerprint,
        patching.scheme.name,
        patching.saliency,
        patching.akpm_views,
        cfg.encoder,
        encoder_id,
        cfg.crop_size,
    )
    return cache_dir("features") / f"{split.path.stem}-{patching.name}-{cfg.encoder}-{key}.h5"


def load_features(split: Split, patching: Patching, cfg: FeatureConfig, device: torch.device) -> PatchFeatures:
    """The features of ``split``, extracting and caching its whole data file on first use."""
    encoder = build_encoder(cfg.encoder, cfg.weights)
    path = store_path(split, patching, cfg, encoder.weights_id())
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            log.info("extracting %s patch features of %s into %s", patching.name, split.path.name, path)
            with atomic_path(path) as tmp:
                extract(split.path, tmp, patching, encoder.to(device), cfg, device)
    handle = h5py.File(path, "r")
    arrays = {k: handle[k] for k in ("features", *VIEWS) if k in handle}
    locs, boxes = torch.from_numpy(handle["locations"][:]), handle["boxes"][:]
    if sum(a.size * a.dtype.itemsize for a in arrays.values()) <= IN_MEMORY_BYTES:
        arrays = {k: torch.from_numpy(a[:]) for k, a in arrays.items()}
        handle.close()  # larger stores stay open and are read batch by batch
    features = arrays.pop("features")
    return PatchFeatures(features, locs, boxes, split.meta["row"].to_numpy(), path.name, arrays)


def extract(
    data_path: Path,
    out: Path,
    patching: Patching,
    encoder: PatchEncoder,
    cfg: FeatureConfig,
    device: torch.device,
) -> None:
    """Encode every image of ``data_path`` into an HDF5 store at ``out``."""
    detector = build_detector(patching.saliency) if patching.saliency else None
    scheme = patching.scheme
    with h5py.File(data_path, "r") as src, h5py.File(out, "w") as dst:
        images = src[IMAGE_KEY]
        n, height, width = images.shape[:3]
        cells = scheme.boxes((0, 0, width, height))
        d = encoder.out_dim
        datasets = {
            "features": dst.create_dataset("features", (n, scheme.num_patches, d), np.float16, chunks=True),
            "locations": dst.create_dataset("locations", (n, scheme.num_patches, 5), np.float32),
            "boxes": dst.create_dataset("boxes", (n, 4), np.int32),
        }
        views = akpm_view_slices(scheme) if patching.akpm_views else {}
        for name, (_, count) in views.items():
            datasets[name] = dst.create_dataset(name, (n, count, d), np.float16, chunks=True)
        with stage(f"features {data_path.stem[-10:]} {patching.name}", n) as advance:
            for start in range(0, n, cfg.batch_size):
                raw = images[start : start + cfg.batch_size]
                stop = start + len(raw)
                boxes = detector.boxes(raw) if detector else np.tile([0, 0, width, height], (len(raw), 1))
                x = torch.from_numpy(raw).to(device).permute(0, 3, 1, 2).float().div_(255)
                if detector:
                    x = lock(x, boxes)
                crops = cut(x, cells, cfg.crop_size)
                encoded = encode_crops(torch.cat([crops, *view_crops(crops, views)], dim=1), encoder).cpu().numpy()
                datasets["features"][start:stop] = encoded[:, : scheme.num_patches]
                offset = scheme.num_patches
                for name, (_, count) in views.items():
                    datasets[name][start:stop] = encoded[:, offset : offset + count]
                    offset += count
                datasets["locations"][start:stop] = np.stack(
                    [locations(scheme.boxes(tuple(b)), width, height) for b in boxes.tolist()]
                )
                datasets["boxes"][start:stop] = boxes
                advance(len(raw))


def akpm_view_slices(scheme: PatchScheme) -> dict[str, tuple[slice, int]]:
    """The patches each AKPM view is made from (the 1x1 level rotated 3 ways, the 4x4 level greyed) and its size."""
    levels = dict(zip(scheme.levels, scheme.level_slices(), strict=True))
    views = {}
    if 1 in levels:
        views["rotated"] = (levels[1], 3)
    if 4 in levels:
        views["grey"] = (levels[4], 16)
    return views


def view_crops(crops: torch.Tensor, views: dict[str, tuple[slice, int]]) -> list[torch.Tensor]:
    """The crops of each view: the whole-box crop rotated by 90, 180, 270 degrees; level-4 crops in grey."""
    out = []
    for name, (part, _) in views.items():
        if name == "rotated":
            whole = crops[:, part][:, 0]
            out.append(torch.stack([torch.rot90(whole, k, dims=(-2, -1)) for k in (1, 2, 3)], dim=1))
        else:
            luma = (crops[:, part] * LUMA.to(crops.device).view(1, 1, 3, 1, 1)).sum(2, keepdim=True)
            out.append(luma.expand_as(crops[:, part]))
    return out


LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R BT.601, what PIL's convert("L") uses


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
