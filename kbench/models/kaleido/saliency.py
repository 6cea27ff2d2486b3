"""Salient-object boxes for Kaleido-BERT's patch generator: the box that "locks" the garment of a product photo.

Product photos show one garment on a light, nearly uniform studio backdrop, so the default detector reads the
backdrop's colour off the image border and boxes what differs from it; a pretrained salient-object network can
take its place as a ``SaliencyDetector`` named ``"package.module:ClassName"``. Detectors are the features layer's
``BoxDetector``s: the patching carries the one built here to extraction.
"""

from __future__ import annotations

import importlib

import numpy as np
from scipy import ndimage

from kbench.core.errors import KbenchError
from kbench.core.registry import Registry
from kbench.features.detectors import BoxDetector

MIN_SIDE = 5  # pixels: the patch generator cuts a 5 x 5 grid with integer boundaries inside every box
OTSU_BINS = 64
# Connectivity within one image and none across the batch: 8-neighbours for the foreground, 4 for the backdrop.
_EIGHT = np.zeros((3, 3, 3), dtype=bool)
_EIGHT[1] = True
_FOUR = np.zeros((3, 3, 3), dtype=bool)
_FOUR[1, 1, :] = _FOUR[1, :, 1] = True


class SaliencyDetector(BoxDetector):
    """Finds the main object of each product photo and returns its pixel box (the base class of plug-ins)."""


SALIENCY: Registry[type[SaliencyDetector]] = Registry("saliency detector", base=SaliencyDetector)


@SALIENCY.register("border-contrast")
class BorderContrast(SaliencyDetector):
    """Boxes what differs from the backdrop colour read off the image border; the whole image if nothing does.

    Per image: the backdrop is the median colour of a thin border frame; a pixel's distance from it is its RGB
    distance, except that a darkening by at most ``shadow`` that keeps the backdrop's hue (a studio shadow)
    counts by its hue change alone. Foreground is what lies farther than Otsu's threshold of the distances
    (clipped at four times ``min_contrast``, so that a garment's several colours do not split into classes of
    their own) and than ``min_contrast``, with holes filled; regions under ``part`` of the largest one are
    speckle. The box of the rest is enlarged by ``margin`` of its size on every side.
    """

    def __init__(
        self,
        *,
        margin: float = 0.02,
        min_fraction: float = 0.01,
        min_contrast: float = 20.0,
        shadow: float = 0.15,
        part: float = 0.05,
        border: int = 4,
        downsample: int = 2,
        chunk: int = 64,
    ) -> None:
        self.margin = margin
        self.min_fraction = min_fraction  # less foreground than this share of the image: the whole image
        self.min_contrast = min_contrast  # RGB distance
        self.shadow = shadow  # share of the backdrop's brightness
        self.part = part
        self.border = border  # pixels: the width of the frame the backdrop colour is read from
        self.downsample = downsample  # work on the mean colours of downsample x downsample blocks
        self.chunk = chunk  # images processed at a time, which bounds the memory used

    def boxes(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < MIN_SIDE:
            raise KbenchError(
                f"saliency needs (B, H, W, 3) images of at least {MIN_SIDE} x {MIN_SIDE} pixels, got {images.shape}"
            )
        out = np.empty((len(images), 4), dtype=np.int64)
        for start in range(0, len(images), self.chunk):
            out[start : start + self.chunk] = self._boxes(images[start : start + self.chunk])
        return out

    def _boxes(self, images: np.ndarray) -> np.ndarray:
        """The boxes of one chunk of images."""
        h, w = images.shape[1:3]
        f = self.downsample
        padded = np.pad(images, ((0, 0), (0, -h % f), (0, -w % f), (0, 0)), mode="edge")
        pixels = sum(padded[:, i::f, j::f].astype(np.float32) for i in range(f) for j in range(f)) / (f * f)
        distance = self._distance(pixels)
        threshold = np.maximum(_otsu(distance, 4 * self.min_contrast), self.min_contrast)
        mask = ndimage.binary_fill_holes(distance > threshold[:, None, None], structure=_FOUR)
        box, area = self._extent(mask)
        found = area >= max(self.min_fraction * mask[0].size, 1)
        box = np.where(found[:, None], box * f, np.array([0, 0, w, h]))
        return _fit(_grow(box, self.margin), w, h)

    def _distance(self, pixels: np.ndarray) -> np.ndarray:
        """(B, h, w) distance of each pixel from the backdrop colour, shadows counting by their hue change only."""
        k = max(1, self.border // self.downsample)
        strips = (pixels[:, :k], pixels[:, -k:], pixels[:, :, :k], pixels[:, :, -k:])
        frame = np.concatenate([s.reshape(len(pixels), -1, 3) for s in strips], axis=1)
        backdrop = np.median(frame, axis=1)[:, None, None, :]
        norm2 = np.maximum((backdrop * backdrop).sum(-1), 1.0)
        ratio = (pixels * backdrop).sum(-1) / norm2  # brightness relative to the backdrop, along its colour
        hue = np.linalg.norm(pixels - ratio[..., None] * backdrop, axis=-1)
        brightness = np.where((ratio >= 1 - self.shadow) & (ratio <= 1), 0, ratio - 1) * np.sqrt(norm2)
        return np.hypot(hue, brightness)

    def _extent(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (B, 4) box ``[x1, y1, x2, y2]`` and the (B,) pixel count of each mask's regions, speckle left out."""
        b = len(mask)
        labels, count = ndimage.label(mask, structure=_EIGHT)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        # Per region: its image, then x1, y1, x2, y2.
        spans = np.array(
            [(s[0].start, s[2].start, s[1].start, s[2].stop, s[1].stop) for s in ndimage.find_objects(labels)],
            dtype=np.int64,
        ).reshape(-1, 5)
        image = spans[:, 0]
        largest = np.zeros(b, dtype=np.int64)
        np.maximum.at(largest, image, sizes)
        keep = sizes >= self.part * largest[image]
        area = np.zeros(b, dtype=np.int64)
        np.add.at(area, image[keep], sizes[keep])
        box = np.tile(np.array([mask.shape[2], mask.shape[1], 0, 0], dtype=np.int64), (b, 1))
        for k, reduce in enumerate((np.minimum, np.minimum, np.maximum, np.maximum)):
            reduce.at(box[:, k], image[keep], spans[keep, k + 1])
        return box, area


def _otsu(values: np.ndarray, top: float) -> np.ndarray:
    """Otsu's threshold of each (h, w) map of a (B, h, w) batch of non-negative values, clipped at ``top``."""
    b = len(values)
    bins = np.minimum(values * (OTSU_BINS / top), OTSU_BINS - 1).astype(np.int64)
    hist = np.bincount((bins + np.arange(b)[:, None, None] * OTSU_BINS).ravel(), minlength=b * OTSU_BINS)
    p = hist.reshape(b, OTSU_BINS) / values[0].size
    below = np.cumsum(p, axis=1)  # share of the pixels at or below each bin
    mean = np.cumsum(p * np.arange(OTSU_BINS), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean[:, -1:] * below - mean) ** 2 / (below * (1 - below))
    return (np.argmax(np.nan_to_num(between, nan=-1.0), axis=1) + 1) * (top / OTSU_BINS)


def _grow(box: np.ndarray, margin: float) -> np.ndarray:
    """Boxes enlarged by ``margin`` of their width (height) on the left and right (top and bottom)."""
    pad = np.rint((box[:, 2:] - box[:, :2]) * margin).astype(np.int64)
    return np.concatenate([box[:, :2] - pad, box[:, 2:] + pad], axis=1)


def _fit(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes clipped to the image and widened (about their centre, kept inside) to at least ``MIN_SIDE`` a side."""
    size = np.array([width, height])
    start, end = np.clip(box[:, :2], 0, size), np.clip(box[:, 2:], 0, size)
    short = np.maximum(MIN_SIDE - (end - start), 0)
    start = np.clip(start - short // 2, 0, size - MIN_SIDE)
    return np.concatenate([start, np.maximum(end, start + MIN_SIDE)], axis=1).astype(np.int64)


def build_detector(name: str) -> SaliencyDetector:
    """A registered detector, or a plug-in named ``"package.module:ClassName"``, built with its defaults and
    ``name`` as its name (the feature store's key)."""
    detector = _detector_class(name)()
    detector.name = name
    return detector


def _detector_class(name: str) -> type[SaliencyDetector]:
    if ":" not in name:
        return SALIENCY.get(name)
    module, _, attr = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise KbenchError(f"cannot load saliency detector {name!r}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, SaliencyDetector)):
        raise KbenchError(
            f"saliency detector {name!r} is not a subclass of {SaliencyDetector.__module__}.SaliencyDetector"
        )
    return cls


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of (..., 4) boxes [x1, y1, x2, y2] (exclusive ends)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    sides = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = sides[..., 0] * sides[..., 1]
    union = _area(a) + _area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _area(box: np.ndarray) -> np.ndarray:
    return np.prod(np.clip(box[..., 2:] - box[..., :2], 0, None), axis=-1)


def score_boxes(predicted: np.ndarray, truth: np.ndarray, *, size: tuple[int, int] | None = None) -> dict[str, float]:
    """Mean IoU, the shares with IoU >= 0.5 and >= 0.75, and the share of whole-image (fallback) predictions.

    ``size`` is the images' ``(width, height)``; by default the farthest right and bottom edges of all boxes.
    """
    predicted, truth = np.asarray(predicted).reshape(-1, 4), np.asarray(truth).reshape(-1, 4)
    if size is None:
        size = tuple(int(v) for v in np.maximum(predicted[:, 2:].max(0), truth[:, 2:].max(0)))
    iou = box_iou(predicted, truth)
    whole = (predicted == np.array([0, 0, *size])).all(axis=1)
    return {
        "iou": float(iou.mean()),
        "iou50": float((iou >= 0.5).mean()),
        "iou75": float((iou >= 0.75).mean()),
        "fallback": float(whole.mean()),
    }
