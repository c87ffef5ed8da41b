"""A memory plan: the predicted peak memory of one training step of a stitched net, before any
real memory is spent, so that a plan that cannot fit is known before it crashes.

How: a copy of the net on torch's ``meta`` device runs one forward pass and a loss on a meta
batch (shapes only, no data, no memory), under ``torch.autograd.graph.saved_tensors_hooks``; the
tensors autograd keeps for the backward pass are the activations a real step holds at its peak.
They are counted once per storage (an in-place ReLU's output and its input, a view and its base
are one), and each is charged to the part of the net that saved it (the shared trunk, the
columns, the fusion units, the head inputs, the heads, the loss). This is shape propagation
through the real modules: every timm op, unit and head runs as it would.

What is approximated (``MemoryPlan.notes``):

- the loss: each prediction is squared and averaged, which keeps one copy of the prediction, as
  cross-entropy (its log-softmax) and the dense regression losses roughly do;
- the numbers are float32: under AMP most activations are half as large, so the plan is an upper
  bound there;
- the peak is taken as parameters + gradients + optimiser state + activations + the largest
  tensor (one gradient of the largest activation in flight at the start of the backward pass);
  in a real step the gradients grow as the activations are freed, so this errs on the high side;
- allocator caching and fragmentation (CUDA) and the data loader are not counted.

Checkpointing (``train.checkpoint: segments``, ``plan_memory(..., checkpointed=True)``): a
checkpointed step keeps, of the shared trunk's and the columns' activations, only each segment's
input (what the segments' pre-hooks see, counted once per storage), and recomputes one segment at
a time in the backward pass: ``activations`` = the other parts' saves + the segments' inputs, and
``recompute`` = the largest segment's own saves, added to the peak.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fusionsearch.errors import DoesNotFitError, FusionSearchError
from fusionsearch.nets.net import StitchedNet
from fusionsearch.train.config import TrainConfig, max_memory_bytes

__all__ = ["MemoryPlan", "plan_memory", "optimizer_buffers", "gib", "fmt_bytes", "available", "check_fits"]

GIB = float(1 << 30)
SEGMENT_PARTS = ("shared", "columns")  # what ``train.checkpoint: segments`` recomputes

NOTES = (
    "activations: the tensors autograd saves in one forward pass (shape propagation on the meta device)",
    "loss: one copy of each prediction; float32 (AMP roughly halves activations)",
    "peak: parameters + gradients + optimiser state + activations + the largest tensor (an upper bound)",
)


def gib(n: float) -> float:
    """Bytes as GiB (what a person reads and ``train.max_memory`` is written in)."""
    return n / GIB


def fmt_bytes(n: float) -> str:
    """Bytes as MiB below a GiB, else GiB: a tiny net's plan still reads as numbers."""
    return f"{n / (1 << 20):.1f} MiB" if n < GIB else f"{gib(n):.2f} GiB"


def optimizer_buffers(optimizer: str, momentum: float = 0.9) -> int:
    """Buffers per parameter the optimiser keeps: SGD one momentum buffer (none without momentum),
    AdamW two (its first and second moments)."""
    if optimizer == "sgd":
        return 1 if momentum > 0 else 0
    if optimizer == "adamw":
        return 2
    raise FusionSearchError(f"unknown optimizer {optimizer!r}: use 'sgd' or 'adamw'")


@dataclass
class MemoryPlan:
    """The predicted peak memory of one training step, in bytes, by what holds it."""

    batch_size: int
    input_size: tuple[int, int, int]
    optimizer: str
    parameters: int
    gradients: int
    optimizer_state: int
    activations: int
    largest: int  # the largest single tensor (parameter or activation)
    largest_name: str
    parts: dict[str, int] = field(default_factory=dict)  # activations by part of the net
    segments: dict[str, int] = field(default_factory=dict)  # activations by segment (checkpointing's unit)
    recompute: int = 0  # checkpointing: the largest segment's activations, recomputed in backward
    notes: tuple[str, ...] = NOTES

    @property
    def total(self) -> int:
        """The predicted peak."""
        return (
            self.parameters + self.gradients + self.optimizer_state + self.activations + self.largest + self.recompute
        )

    def rows(self) -> list[tuple[str, int]]:
        """(what, bytes) in the order ``describe`` and ``inspect --memory`` print them."""
        rows = [
            ("parameters", self.parameters),
            ("gradients", self.gradients),
            (f"optimiser state ({self.optimizer})", self.optimizer_state),
            ("activations", self.activations),
            *((f"  {part}", n) for part, n in self.parts.items()),
            (f"largest tensor ({self.largest_name})", self.largest),
        ]
        if self.recompute:
            rows.append(("checkpoint recompute (largest segment)", self.recompute))
        return [*rows, ("peak (predicted)", self.total)]

    def describe(self) -> list[str]:
        """The plan as lines of text."""
        c, h, w = self.input_size
        head = f"memory plan: batch {self.batch_size} x {c}x{h}x{w}, {self.optimizer}"
        return [head, *(f"{what}: {fmt_bytes(n)}" for what, n in self.rows()), *(f"note: {n}" for n in self.notes)]


def plan_memory(
    net: StitchedNet,
    batch_size: int,
    input_size: tuple[int, int, int],
    optimizer: str = "sgd",
    momentum: float = 0.9,
    checkpointed: bool = False,
) -> MemoryPlan:
    """The predicted peak memory of training ``net`` on batches of ``batch_size`` images of
    ``input_size`` (C, H, W) with ``optimizer``; ``net`` itself is not touched (a meta copy runs).

    Examples:
        >>> plan = plan_memory(net, 8, (3, 64, 64), "adamw")  # doctest: +SKIP
        >>> print("\\n".join(plan.describe()))  # doctest: +SKIP
    """
    if batch_size < 1:
        raise FusionSearchError(f"batch size must be >= 1, got {batch_size}")
    params = {id(p): p for p in net.parameters()}.values()
    n_param = sum(p.numel() * p.element_size() for p in params)
    n_grad = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    meta = copy.deepcopy(net).to("meta").train()
    saved, segments, largest, kept = _saved_by_part(meta, batch_size, input_size)
    big_param = max(params, key=lambda p: p.numel() * p.element_size(), default=None)
    p_bytes = big_param.numel() * big_param.element_size() if big_param is not None else 0
    big_act = max(largest.items(), key=lambda kv: kv[1], default=("none", 0))
    name, top = ("a parameter", p_bytes) if p_bytes > big_act[1] else (f"activation in {big_act[0]}", big_act[1])
    return MemoryPlan(
        batch_size=batch_size,
        input_size=tuple(input_size),  # type: ignore[arg-type]  # C, H, W: checked by the caller's parse
        optimizer=optimizer,
        parameters=n_param,
        gradients=n_grad,
        optimizer_state=n_grad * optimizer_buffers(optimizer, momentum),
        activations=kept if checkpointed else sum(saved.values()),
        largest=top,
        largest_name=name,
        parts=_parts(saved, kept if checkpointed else None),
        segments=segments,
        recompute=max((n for k, n in segments.items() if k.split("[")[0] in SEGMENT_PARTS), default=0)
        if checkpointed
        else 0,
    )


def _parts(saved: dict[str, int], kept: int | None) -> dict[str, int]:
    """The activations by part; checkpointed (``kept``: its total), the shared trunk's and the
    columns' saves are replaced by the segments' inputs, which is all a checkpointed step keeps of them."""
    if kept is None:
        return {k: v for k, v in saved.items() if v}
    out = {k: v for k, v in saved.items() if v and k not in SEGMENT_PARTS}
    return {**out, "segment inputs (checkpointed)": kept - sum(out.values())}


def available(device: torch.device, max_memory: float | None) -> tuple[int, str] | None:
    """The bytes a trial may use on ``device`` and where that figure comes from: a GPU's free
    memory (``torch.cuda.mem_get_info``), ``train.max_memory`` (GiB), the smaller of the two; None
    where nothing limits it (the CPU without ``max_memory``: no plan is made at all)."""
    limits: list[tuple[int, str]] = []
    cap = max_memory_bytes(max_memory)
    if cap is not None:
        limits.append((cap, "train.max_memory"))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # what this process's allocator holds unused is free to it too (a previous trial's cache)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        limits.append((free, f"free on {device}"))
    return min(limits) if limits else None


def check_fits(
    net: StitchedNet,
    cfg: TrainConfig,
    input_size: tuple[int, int, int],
    device: str | torch.device | None,
    batch_images: int | None = None,
) -> MemoryPlan | None:
    """Raise ``DoesNotFitError`` ("does not fit: needs X GiB, has Y GiB") when the plan's predicted
    peak at ``cfg``'s batch and optimiser is over what ``device`` has (``available``), before any
    memory is spent on it; returns the plan (None: nothing to check against, as on the CPU without
    ``cfg.max_memory``). A net the meta device cannot run is not checked: its real step will say.
    ``batch_images``: the images a step holds, where not ``cfg.batch_size`` (``batches: per_task``)."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    limit = available(torch.device(device), cfg.max_memory)
    if limit is None:
        return None
    batch_size = batch_images or cfg.batch_size
    try:
        plan = plan_memory(net, batch_size, input_size, cfg.optimizer, cfg.momentum, cfg.checkpoint == "segments")
    except FusionSearchError:
        return None
    if plan.total > limit[0]:
        raise DoesNotFitError(
            f"does not fit: needs {gib(plan.total):.2f} GiB, has {gib(limit[0]):.2f} GiB ({limit[1]};"
            f" batch {batch_size}, activations {gib(plan.activations):.2f} GiB)",
            by_free_memory=limit[1] != "train.max_memory",
        )
    return plan


def _saved_by_part(
    net: StitchedNet, batch_size: int, input_size: tuple[int, int, int]
) -> tuple[dict[str, int], dict[str, int], dict[str, int], int]:
    """Bytes autograd saves in one forward pass + loss, by part and by segment, the largest saved
    tensor per part, and what a checkpointed step keeps instead (the other parts' saves and the
    segments' inputs)."""
    params = {_storage_key(p) for p in net.parameters()}
    seen: set[Any] = set()
    kept: set[Any] = set()  # saved outside the shared trunk's and the columns' segments
    inputs: dict[Any, int] = {}
    where = ["input"]
    parts: dict[str, int] = {}
    segments: dict[str, int] = {}
    largest: dict[str, int] = {}

    def pack(t: Tensor) -> Tensor:
        key = _storage_key(t)
        if key not in params and key not in seen:
            seen.add(key)
            n = t.untyped_storage().nbytes()
            part = where[-1].split("[")[0]
            if part not in SEGMENT_PARTS:
                kept.add(key)
            parts[part] = parts.get(part, 0) + n
            segments[where[-1]] = segments.get(where[-1], 0) + n
            largest[where[-1]] = max(largest.get(where[-1], 0), n)
        return t

    x = torch.empty(batch_size, *input_size, device="meta")
    try:
        with _tagged(net, where, inputs), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            preds, extra = net(x, return_extra=True)
            where.append("loss")
            loss = sum((p.float().square().mean() for p in preds.values()), extra.float())
    except (NotImplementedError, RuntimeError) as e:  # an op that reads data cannot run on meta
        raise FusionSearchError(f"memory plan: the net does not run on the meta device ({e})") from e
    del loss
    checkpointed = sum(n for k, n in inputs.items() if k not in kept and k not in params)
    checkpointed += sum(n for part, n in parts.items() if part not in SEGMENT_PARTS)
    return parts, segments, largest, checkpointed


def _storage_key(t: Tensor) -> Any:
    """One key per storage (meta tensors have no data pointer; the storage object's handle is one)."""
    return t.untyped_storage()._cdata


def _drop(where: list[str]) -> None:
    """A forward hook's end: returns None, so the module's output stays its own."""
    where.pop()


@contextmanager
def _tagged(net: StitchedNet, where: list[str], inputs: dict[Any, int] | None = None) -> Iterator[None]:
    """While a part of ``net`` runs, ``where[-1]`` names it (``columns[seg][task]``, ...);
    ``inputs`` collects the bytes of the shared trunk's and the columns' segment inputs, by
    storage (what a checkpointed step keeps of those segments)."""
    named: list[tuple[str, nn.Module]] = [(f"shared[{i}]", m) for i, m in enumerate(net.shared)]
    for t, col in enumerate(net.columns):
        named += [(f"columns[{j}][{t}]", seg) for j, seg in enumerate(col)]
    named += [(f"units[{k}]", u) for k, u in net.units.items()]
    named += [(f"head_inputs[{i}]", m) for i, m in enumerate(net.head_inputs or [])]
    named += [(f"heads[{t}]", h) for t, h in net.heads.items()]
    handles = []

    def enter(name: str, args: tuple[Any, ...]) -> None:
        where.append(name)
        if inputs is not None and name.startswith(("shared", "columns")):
            for a in args:
                if isinstance(a, Tensor):
                    inputs[_storage_key(a)] = a.untyped_storage().nbytes()

    for name, module in named:
        handles.append(module.register_forward_pre_hook(lambda _, args, n=name: enter(n, args)))
        handles.append(module.register_forward_hook(lambda *_: _drop(where)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
