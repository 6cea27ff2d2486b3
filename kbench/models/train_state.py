"""Training states: where a long fit leaves its progress, so that a killed one resumes instead of starting again.

A state is everything the rest of the fit depends on: the weights (safetensors), the optimizer's moments, the
learning-rate schedule, the global random generators (dropout draws from them; every rank's, in a data-parallel
fit) and the fit's own counters and running means. Batches are functions of their step (``kbench.data.loader``), so
the data order needs no state. Saved every ``every`` steps into a directory replaced atomically, its checksums written
last (a state that fails them is not resumed from); on a CPU a resumed fit ends with the weights an uninterrupted one
does, bit for bit.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from kbench.core.integrity import check_dir, seal_dir
from kbench.core.paths import atomic_dir, check_space, write_failed

log = logging.getLogger(__name__)

WEIGHTS_FILE, STATE_FILE = "model.safetensors", "state.pt"


class TrainState:
    """The saved progress of one fit under ``directory``, written every ``every`` steps (0: never)."""

    def __init__(self, directory: Path, every: int) -> None:
        self.directory = Path(directory)
        self.every = every

    def due(self, done: int, total: int) -> bool:
        """Whether to save after ``done`` of ``total`` steps (not after the last: the result is saved then)."""
        return self.every > 0 and done % self.every == 0 and done < total

    def save(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, progress: dict[str, Any]
    ) -> None:
        """Save the state after ``progress["done"]`` steps (rank 0 writes; every rank's generators are kept)."""
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        generators = [None] * world
        if world > 1:
            dist.all_gather_object(generators, rng_state())
        else:
            generators = [rng_state()]
        if rank == 0:
            # weights and the optimizer's moments (AdamW: two per weight): a full disk is one line, not a torch error
            weights = sum(t.numel() * t.element_size() for t in unwrap(model).state_dict().values())
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            check_space(self.directory.parent, 3 * weights, f"the training state {self.directory.name}")
            with atomic_dir(self.directory) as tmp:
                try:
                    save_model(unwrap(model), str(tmp / WEIGHTS_FILE))
                    state = {
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "generators": generators,
                        "progress": progress,
                    }
                    with open(tmp / STATE_FILE, "wb") as f:  # a file object: torch's error keeps the OSError
                        torch.save(state, f)
                    seal_dir(tmp)
                except (OSError, RuntimeError, SafetensorError) as exc:  # the space left is told before cleaning up
                    cause = os_error(exc)
                    if cause is None:
                        raise
                    raise write_failed(cause, self.directory, "the training state") from None
        if world > 1:
            dist.barrier()

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any] | None:
        """Load the saved state into ``model``, ``optimizer``, ``scheduler`` and the generators; its progress, or
        None when there is none or it fails its checksums (then the fit starts over, with a warning)."""
        if not (self.directory / STATE_FILE).is_file():
            return None
        problem = check_dir(self.directory)
        if problem is not None:
            log.warning("training state %s is damaged (%s); starting the fit over", self.directory, problem)
            return None
        rank = dist.get_rank() if dist.is_initialized() else 0
        state = torch.load(self.directory / STATE_FILE, map_location="cpu", weights_only=True)
        load_model(unwrap(model), str(self.directory / WEIGHTS_FILE), device=str(next(model.parameters()).device))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["generators"][rank])
        log.info("resuming from the training state after step %d in %s", state["progress"]["done"], self.directory)
        return state["progress"]

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def os_error(exc: BaseException) -> OSError | None:
    """The operating system's error behind a failed write: the exception itself, the one torch's zip writer ran
    into (it reports a full disk as ``unexpected pos``), or the errno in safetensors' message; else None."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc.__context__, OSError):
        return exc.__context__
    found = re.search(r"\(os error (\d+)\)", str(exc)) if isinstance(exc, SafetensorError) else None
    return OSError(int(found[1]), os.strerror(int(found[1]))) if found else None


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def rng_state() -> dict[str, Any]:
    """The global generators: torch's (CPU and current CUDA device), NumPy's legacy one and Python's."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "numpy": [torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
