"""Device names the user gives (``auto``, ``cpu``, ``cuda:1``), checked before anything starts.

A study run with ``--devices cuda:0`` on a machine without CUDA used to start, fail every trial on
its first tensor, and leave those failures in the study. Whether a device exists is known before
the first trial, so it is asked once, here.
"""

from __future__ import annotations

from typing import Any

import torch

from fusionsearch.errors import ArgumentError

__all__ = ["check_device", "assign_devices", "use_device", "latency_ms"]


def check_device(name: str) -> str:
    """``name`` if this machine has it (``auto`` always), else ArgumentError saying what it has."""
    if name == "auto":
        return name
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ArgumentError(f"unknown device {name!r}: use auto, cpu or cuda[:N]") from None
    if dev.type == "cpu":
        return name
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ArgumentError(f"device {name!r} asked for, but this machine has no CUDA device: use cpu or auto")
        if dev.index is not None and dev.index >= n:
            raise ArgumentError(f"device {name!r} asked for, but this machine has {n} CUDA device(s): cuda:0..{n - 1}")
        return name
    if dev.type == "mps" and torch.backends.mps.is_available():
        return name
    raise ArgumentError(f"device {name!r} is not available here: use auto, cpu or cuda[:N]")


def assign_devices(spec: str, workers: int) -> list[str]:
    """One device per worker, round-robin over ``spec`` (``auto``: every visible GPU, else the CPU;
    or ``cpu``, ``cuda:0,cuda:1``), each checked to exist."""
    pool = [check_device(d.strip()) for d in spec.split(",") if d.strip()]
    if not pool:
        raise ArgumentError("--devices is empty: give auto, cpu or cuda:0,cuda:1")
    if pool == ["auto"]:
        n = torch.cuda.device_count()
        pool = [f"cuda:{i}" for i in range(n)] if n else ["cpu"]
    return [pool[i % len(pool)] for i in range(workers)]


def use_device(name: str, worker: int = 0) -> str:
    """The device this worker trains on, made CUDA's current device. ``auto`` is GPU
    ``worker % count`` (several ``fusionsearch worker`` processes left at the default used to pile
    onto GPU 0), else the CPU. Making it current matters beyond placement: ``torch.cuda.synchronize``
    (the latency timer's), ``empty_cache`` and new CUDA tensors without an index act on the
    current device, GPU 0 unless told."""
    name = check_device(name)
    if name == "auto":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        name = f"cuda:{worker % n}" if n else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        torch.cuda.set_device(dev.index if dev.index is not None else 0)
    return name


def latency_ms(net: Any, size: tuple[int, int, int], device: torch.device) -> float:
    """Median forward time of one image in milliseconds, by ``torch.utils.benchmark.Timer`` (which warms up and
    synchronises CUDA itself)."""
    from torch.utils.benchmark import Timer

    net.eval()
    x = torch.randn(1, *size, device=device)
    with torch.no_grad():
        net(x)  # warm-up: lazy initialisation, cuDNN autotuning
        timer = Timer(stmt="net(x)", globals={"net": net, "x": x}, num_threads=torch.get_num_threads())
        return 1000 * timer.timeit(5).median
