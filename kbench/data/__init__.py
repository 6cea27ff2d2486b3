"""Datasets in the Fashion-Gen HDF5 layout: the official release and the generated SynthFashion."""

from __future__ import annotations

from kbench.core.config import DataConfig
from kbench.core.registry import Registry
from kbench.data.source import DataSource
from kbench.data.splits import DatasetSplits, Split

DATASETS: Registry[type[DataSource]] = Registry("dataset", base=DataSource)
DATASETS.register("synth", "kbench.data.synth:SynthFashion")
DATASETS.register("fashiongen", "kbench.data.fashiongen:FashionGen")


def load_dataset(cfg: DataConfig) -> DatasetSplits:
    """Locate (generating SynthFashion on first use) and read the dataset ``cfg`` names."""
    from kbench.data.fashiongen import read_splits

    source = DATASETS.get(cfg.dataset)()
    return read_splits(source.locate(cfg), cfg, cfg.dataset)


__all__ = ["DATASETS", "DatasetSplits", "Split", "load_dataset"]
