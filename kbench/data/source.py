"""Where a dataset's two HDF5 files come from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from kbench.core.config import DataConfig


class DataSource(ABC):
    """A registered dataset: finds (or makes) a directory holding the two Fashion-Gen-layout files."""

    @abstractmethod
    def locate(self, cfg: DataConfig) -> Path:
        """The directory holding ``fashiongen_256_256_{train,validation}.h5``."""
