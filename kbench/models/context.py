"""What a trial shows the code it runs: zoo entries' hooks see a ``PretrainingContext``, tasks a ``TaskContext``.

Both are plain values built by the engine (``kbench.engine.trial``), so a model or task written outside kbench
needs nothing of the engine's internals: the resolved config, the seed, the device, the tokenizer, the splits
ready for the model, and builders made once per trial (a codebook of visual words, a model's alignments).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from transformers import PreTrainedTokenizerBase

from kbench.core.config import Config
from kbench.data.splits import DatasetSplits
from kbench.features.batches import ModelData
from kbench.features.codebook import Codebook, codebook
from kbench.features.patch_features import Patching

T = TypeVar("T")


@dataclass(kw_only=True)
class PretrainingContext:
    """A trial as a zoo entry's ``prepare`` and ``pretraining_collator`` see it."""

    config: Config  # the trial's resolved config (its variant's overrides applied)
    seed: int
    device: torch.device
    tokenizer: PreTrainedTokenizerBase
    patching: Patching  # how this entry's images become patches
    load: Callable[[str], ModelData]  # a split ("train", "dev", "test") ready for the model, made once
    cache: dict[str, Any] = field(default_factory=dict)

    def data(self, split: str) -> ModelData:
        """The tokenised texts and patch features of ``split``."""
        return self.load(split)

    def cached(self, key: str, make: Callable[[], T]) -> T:
        """What ``make`` builds, built once per trial and shared by every stage under ``key``."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def codebook(self, size: int) -> Codebook:
        """``size`` visual words fitted on the training patches (cached on disk, and once per trial here)."""
        return self.cached(f"codebook-{size}", lambda: codebook(self.data("train").features, size, self.seed))


@dataclass(kw_only=True)
class TaskContext(PretrainingContext):
    """A trial as a task sees it: also the dataset's label spaces."""

    dataset: DatasetSplits
