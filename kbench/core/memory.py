"""Peak memory of a stage: the highest resident set of the process during it, and the GPU's peak allocation.

On Linux the kernel's high-water mark of the resident set (``VmHWM``) is reset at the start of each stage
(``/proc/self/clear_refs``), so each stage reports its own peak; elsewhere the peak is the process's so far.
Loader workers are processes of their own and are not counted.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak() -> None:
    """Start a new high-water mark of the resident set (Linux), best effort."""
    with contextlib.suppress(OSError):
        CLEAR_REFS.write_text("5")


def peak_rss_mb() -> float:
    """The highest resident set since the last ``reset_peak`` (Linux) or since the process started, in MiB."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


@contextmanager
def peak_memory(stage: str, out: dict[str, float], device: torch.device) -> Iterator[None]:
    """Record ``mem/<stage>_peak_mb`` (and ``mem/<stage>_cuda_peak_mb`` on a GPU) of the block in ``out``."""
    reset_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield
    out[f"mem/{stage}_peak_mb"] = round(peak_rss_mb(), 1)
    if device.type == "cuda":
        out[f"mem/{stage}_cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
