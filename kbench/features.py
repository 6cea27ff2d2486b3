"""The feature store: every image's patches encoded once by the frozen encoder, cached on disk.

A store file covers all rows of one HDF5 data file for one (patch scheme, encoder) and is keyed by the data
file's fingerprint, so splits carved from the file (train and dev) index into the same store. Crops are
resized and encoded in batches, never one forward pass per crop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
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
from kbench.patches import PatchScheme, locations
from kbench.paths import atomic_path, cache_dir
from kbench.progress import stage

log = logging.getLogger(__name__)

FEATURES_VERSION = 1
# Stores up to this size are read into memory; larger ones are read batch by batch from disk.
IN_MEMORY_BYTES = 8 << 30


@dataclass
class PatchFeatures:
    """Patch features and 5-d locations of the examples of one split, indexed by example position."""

    features: torch.Tensor | h5py.Dataset  # (rows, K, D) float16, indexed by file row
    locations: torch.Tensor  # (K, 5) float32, the same for every image
    rows: np.ndarray  # file row of each example
    store: str  # the store's file name: data file, scheme, encoder and the hash of all three

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def dim(self) -> int:
        return int(self.features.shape[-1])

    def batch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (b, K, D) float32, locations (b, K, 5))`` of the examples at ``positions``."""
        rows = self.rows[np.asarray(positions)]
        if isinstance(self.features, torch.Tensor):
            feats = self.features[torch.from_numpy(rows)]
        else:
            unique, inverse = np.unique(rows, return_inverse=True)
            feats = torch.from_numpy(self.features[unique][inverse])
        return feats.float(), self.locations.expand(len(rows), -1, -1)


def store_path(split: Split, scheme: PatchScheme, cfg: FeatureConfig, encoder_id: str) -> Path:
    """Where the store of ``split``'s data file lives in the cache."""
    key = digest(FEATURES_VERSION, split.file_fingerprint, scheme.name, cfg.encoder, encoder_id, cfg.crop_size)
    return cache_dir("features") / f"{split.path.stem}-{scheme.name}-{cfg.encoder}-{key}.h5"


def load_features(split: Split, scheme: PatchScheme, cfg: FeatureConfig, device: torch.device) -> PatchFeatures:
    """The features of ``split``, extracting and caching its whole data file on first use."""
    encoder = build_encoder(cfg.encoder, cfg.weights)
    path = store_path(split, scheme, cfg, encoder.weights_id())
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            log.info("extracting %s patch features of %s into %s", scheme.name, split.path.name, path)
            with atomic_path(path) as tmp:
                extract(split.path, tmp, scheme, encoder.to(device), cfg, device)
    handle = h5py.File(path, "r")
    feats = handle["features"]
    locs = torch.from_numpy(handle["locations"][:])
    if feats.size * feats.dtype.itemsize <= IN_MEMORY_BYTES:
        feats = torch.from_numpy(feats[:])
        handle.close()  # larger stores stay open and are read batch by batch
    return PatchFeatures(feats, locs, split.meta["row"].to_numpy(), path.name)


def extract(
    data_path: Path,
    out: Path,
    scheme: PatchScheme,
    encoder: PatchEncoder,
    cfg: FeatureConfig,
    device: torch.device,
) -> None:
    """Encode every image of ``data_path`` into an HDF5 store at ``out``."""
    with h5py.File(data_path, "r") as src, h5py.File(out, "w") as dst:
        images = src[IMAGE_KEY]
        n, height, width = images.shape[:3]
        boxes = scheme.boxes((0, 0, width, height))
        dst.create_dataset("locations", data=locations(boxes, width, height))
        feats = dst.create_dataset(
            "features", shape=(n, scheme.num_patches, encoder.out_dim), dtype=np.float16, chunks=True
        )
        with stage(f"features {data_path.stem[-10:]} {scheme.name}", n) as advance:
            for start in range(0, n, cfg.batch_size):
                batch = torch.from_numpy(images[start : start + cfg.batch_size]).to(device)
                feats[start : start + len(batch)] = encode_patches(batch, boxes, encoder, cfg.crop_size).cpu().numpy()
                advance(len(batch))


@torch.inference_mode()
def encode_patches(images: torch.Tensor, boxes: np.ndarray, encoder: PatchEncoder, crop_size: int) -> torch.Tensor:
    """``(B, K, D)`` features of ``(B, H, W, 3)`` uint8 images cut into the ``(K, 4)`` boxes shared by all."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    crops = torch.stack([resize(x[:, :, y1:y2, x1:x2], crop_size) for x1, y1, x2, y2 in boxes.tolist()], dim=1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 1, 3, 1, 1)
    crops = (crops - mean) / std
    b, k = crops.shape[:2]
    return encoder(crops.flatten(0, 1)).view(b, k, -1).to(torch.float16)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Anti-aliased bilinear resize of ``(B, 3, h, w)`` crops to ``size x size``."""
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise KbenchError(f"empty patch crop of shape {tuple(x.shape)}: the image is too small for the patch scheme")
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
