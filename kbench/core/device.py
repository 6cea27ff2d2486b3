"""Devices and precision: which device a ``runtime.device`` name means and when bf16 autocast is worth it."""

from __future__ import annotations

import contextlib
import functools

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for, on a GPU or on a CPU with bf16 arithmetic (AVX512-BF16, AMX); full precision
    otherwise: a CPU without it emulates bf16 some 18 times slower than fp32 (BERT-base, measured on AVX2)."""
    if precision == "bf16" and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic natively (what oneDNN's bf16 kernels need)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
