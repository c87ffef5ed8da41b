"""The numerics of a run: the autocast type of a device (bf16 or fp16), the autocast context and
the GradScaler that fp16 needs, and torch's deterministic mode.

Cut from the trainer because they depend on the device and nothing of training: ``fit``,
``evaluate`` and the benchmarks use them alike.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["amp_dtype", "autocast", "grad_scaler", "deterministic_mode"]


@contextlib.contextmanager
def deterministic_mode(on: bool) -> Iterator[None]:
    """Within: ``torch.use_deterministic_algorithms(True)``, cuDNN deterministic and not
    autotuned, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS's condition for repeatable
    matrix products), when ``on``; torch's and cuDNN's previous settings come back after. The
    cuBLAS variable stays set: cuBLAS reads it when it creates a handle, so set it before the
    process's first CUDA matrix product (``--deterministic`` on the command line does, as every
    trial of the study runs deterministic) for the earlier handles to repeat as well."""
    if not on:
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast type on ``device``: bf16 on the CPU and on GPUs with bf16 units (compute
    capability 8.0 on: Ampere, Hopper), fp16 before them (T4, V100). Asked of *this* device, not
    the current one, and not ``torch.cuda.is_bf16_supported()``, which in torch 2.14 answers True
    on pre-Ampere GPUs too, where bf16 is emulated: slower than fp32, and the GradScaler that fp16
    needs was then never enabled."""
    if device.type != "cuda":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


def autocast(device: torch.device, enabled: bool) -> Any:
    """Autocast on ``device`` at its ``amp_dtype`` when ``enabled``: training, evaluation and the
    benchmarks choose the type in one place."""
    return torch.autocast(device.type, dtype=amp_dtype(device), enabled=enabled)


def grad_scaler(device: torch.device, use_amp: bool) -> torch.amp.GradScaler:
    """A GradScaler, enabled only where fp16 autocast runs (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype(device) == torch.float16)
