"""Patch schemes: how an image box is cut into grid cells (FashionBERT's fixed grid, Kaleido's 1x1..5x5 pyramid).

Cells have integer boundaries (cell ``(r, c)`` of an ``n x n`` grid over a box of width ``w`` spans
``x1 + c*w//n .. x1 + (c+1)*w//n``), are listed level by level and row-major inside a level, and carry the
5-d location ``[x1, x2, y1, y2, area]`` normalised by the image size so that every term lies in [0, 1].
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from kbench.core.errors import KbenchError


@dataclass(frozen=True)
class PatchScheme:
    """A stack of square grids (``levels``) laid over one box of the image."""

    name: str
    levels: tuple[int, ...]

    @property
    def num_patches(self) -> int:
        return sum(n * n for n in self.levels)

    def level_slices(self) -> list[slice]:
        """The patch-index range of each level, in order."""
        out, start = [], 0
        for n in self.levels:
            out.append(slice(start, start + n * n))
            start += n * n
        return out

    def boxes(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """``(num_patches, 4)`` integer cell boxes ``[x1, y1, x2, y2]`` (exclusive ends) inside ``box``."""
        x1, y1, x2, y2 = box
        w, h = x2 - x1, y2 - y1
        cells = [
            (x1 + c * w // n, y1 + r * h // n, x1 + (c + 1) * w // n, y1 + (r + 1) * h // n)
            for n in self.levels
            for r in range(n)
            for c in range(n)
        ]
        return np.asarray(cells, dtype=np.int64)


def locations(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """The 5-d locations ``[x1/W, x2/W, y1/H, y2/H, w*h/(W*H)]`` of ``(..., 4)`` boxes ``[x1, y1, x2, y2]``."""
    b = boxes.astype(np.float32)
    x1, y1, x2, y2 = b[..., 0] / width, b[..., 1] / height, b[..., 2] / width, b[..., 3] / height
    return np.stack([x1, x2, y1, y2, (x2 - x1) * (y2 - y1)], axis=-1)


KALEIDO = PatchScheme("kaleido", (1, 2, 3, 4, 5))


def get_scheme(name: str) -> PatchScheme:
    """``kaleido`` (55 patches) or ``grid-N`` (N x N patches; FashionBERT's is ``grid-8``)."""
    if name == KALEIDO.name:
        return KALEIDO
    match = re.fullmatch(r"grid-(\d+)", name)
    if match and 1 <= int(match.group(1)) <= 32:
        return PatchScheme(name, (int(match.group(1)),))
    raise KbenchError(f"unknown patch scheme {name!r}; use kaleido or grid-N (e.g. grid-8)")
