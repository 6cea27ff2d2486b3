"""Extra views of a patching: transforms of one grid level's crops encoded after a row's patches in its store.

A zoo entry declares them in its ``Patching`` (Kaleido-BERT's AKPM reads the whole box rotated and the 4x4 cells
in grey), so that corrupting patches at batch time is a read from the store, not an image operation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R BT.601, what PIL's convert("L") uses


def rotations(crops: torch.Tensor) -> torch.Tensor:
    """``(B, n, 3, S, S)`` crops -> ``(B, 3n, 3, S, S)``: each crop rotated by 90, 180 and 270 degrees, in turn."""
    return torch.stack([torch.rot90(crops, k, dims=(-2, -1)) for k in (1, 2, 3)], dim=2).flatten(1, 2)


def grey(crops: torch.Tensor) -> torch.Tensor:
    """``(B, n, 3, S, S)`` crops in grey (their luma in all three channels)."""
    luma = (crops * LUMA.to(crops.device).view(1, 1, 3, 1, 1)).sum(2, keepdim=True)
    return luma.expand_as(crops)


@dataclass(frozen=True)
class View:
    """The crops of the ``level`` x ``level`` grid, transformed; ``per_cell`` crops come out of each cell."""

    name: str
    level: int
    transform: Callable[[torch.Tensor], torch.Tensor]  # (B, n, 3, S, S) -> (B, n * per_cell, 3, S, S)
    per_cell: int = 1

    @property
    def size(self) -> int:
        """How many features the view adds to a row."""
        return self.level * self.level * self.per_cell
