"""The input pipeline: batches built ahead of the step that consumes them, in background worker processes.

A batch is a pure function of its step number: the epoch's order, the ITM negatives and the collator's masks
and corruptions are all drawn from generators seeded by (seed, stream, step). So a batch is the same whichever
worker builds it and however many workers there are, and a resumed run rebuilds exactly the batches it had not
consumed. Workers are torch ``DataLoader`` processes (forked: the split's store, text and the collator are
inherited, not copied) that pin their batches' memory for an asynchronous copy to the GPU.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

T = TypeVar("T")

PREFETCH = 2  # batches each worker keeps ready (a paper-sized batch is some 80 MB)

# Streams of random draws, so that one step's draws for one purpose never coincide with another's.
PRETRAIN_ORDER, PRETRAIN_NEGATIVES, PRETRAIN_MASKS = 1, 2, 3
FINETUNE_ORDER, FINETUNE_DRAWS = 4, 5


def step_rng(*key: int) -> np.random.Generator:
    """A NumPy generator seeded by ``key`` (seed, stream, step, ...) alone."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def step_generator(*key: int) -> torch.Generator:
    """A torch generator seeded by ``key`` (seed, stream, step, ...) alone."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0]) & (2**63 - 1)
    return torch.Generator().manual_seed(seed)


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, stream: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled order of ``n`` examples in ``epoch`` (cached: every step of an epoch slices the same one)."""
    order = step_rng(seed, stream, epoch).permutation(n)
    order.flags.writeable = False
    return order


class _Steps(Dataset):
    """Item ``i`` is ``make(steps[i])``."""

    def __init__(self, make: Callable[[int], T], steps: Sequence[int]) -> None:
        self.make = make
        self.steps = steps

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> T:
        return self.make(self.steps[i])


def prefetch(make: Callable[[int], T], steps: Sequence[int], workers: int, pin: bool = False) -> Iterator[T]:
    """``make(step)`` for each of ``steps``, in order, built up to ``workers * PREFETCH`` steps ahead by ``workers``
    processes (at most one per CPU this process may use; none: in this thread, as it is consumed); with ``pin``, in
    page-locked memory."""
    workers = min(workers, len(steps), usable_cpus())
    if workers < 1:
        return map(make, steps)
    loader = DataLoader(
        _Steps(make, steps),
        batch_size=None,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=PREFETCH,
        generator=torch.Generator(),  # its seed draw must not advance the global generator that dropout uses
        multiprocessing_context=_context(),
    )
    return iter(loader)


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _context() -> multiprocessing.context.BaseContext | None:
    """Fork where the platform has it: workers inherit the data instead of unpickling a copy each."""
    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
