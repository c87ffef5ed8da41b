"""Task heads of stitched networks, and the adapter that feeds them any backbone layout.

A registered task (``fusionsearch.tasks.task``) brings its own head (DeepLab ASPP for ``seg``, the
100-way age softmax, ...); a task name the registry doesn't know gets ``SimpleHead``, so that
``build`` still works for ad-hoc tasks: its label kind (a map unless its arguments name another)
says whether it predicts a map or one vector per image. Heads see channels-first maps: ``LayoutAdapter`` turns
NHWC maps and (B, N, C) tokens into them first.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from fusionsearch.graph.layouts import Layout, to_channels_first
from fusionsearch.tasks.labels import LabelKind, get_label_kind
from fusionsearch.tasks.resize import resize_bilinear

__all__ = ["head_kind", "SimpleHead", "LayoutAdapter", "tokens_to_map"]


def head_kind(label: str | LabelKind | None) -> str:
    """``"dense"`` when a label kind's head sees a map (``LabelKind.spatial``), ``"cls"`` when it
    predicts from pooled features; a task the registry doesn't know names its kind in its arguments
    (``task_args: {mytask: {label: class}}``), and without one it predicts a map."""
    return "dense" if label is None or get_label_kind(label).spatial else "cls"


def tokens_to_map(x: Tensor, prefix: int) -> Tensor:
    """(B, N, C) tokens -> (B, C, h, w), dropping ``prefix`` class/register tokens."""
    x = x[:, prefix:]
    n = x.shape[1]
    h = int(math.isqrt(n))
    if h * h != n:
        raise ValueError(f"cannot lay {n} tokens out on a square grid for a dense head")
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, h)


class LayoutAdapter(nn.Module):
    """Runs ``body(x, size)`` on channels-first features whatever the backbone's layout:
    tokens become a square map for dense heads (a (B, C, 1, 1) mean for image-level ones)."""

    def __init__(self, body: nn.Module, kind: str, layout: str, prefix_tokens: int = 0) -> None:
        super().__init__()
        self.body = body
        self.kind = kind
        self.layout = layout
        self.prefix_tokens = prefix_tokens

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if self.layout == Layout.NLC:
            x = tokens_to_map(x, self.prefix_tokens) if self.kind == "dense" else x.mean(1)[:, :, None, None]
        else:
            x = to_channels_first(x, self.layout)
        if x.dim() == 3:  # NCL
            x = x[..., None]
        elif x.dim() == 2:  # NC: pooled features
            x = x[:, :, None, None]
        return self.body(x, size)


class _Proj(nn.Module):
    def __init__(self, in_channels: int, out: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.proj = nn.Conv2d(in_channels, out, 1) if kind == "dense" else nn.Linear(in_channels, out)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if self.kind == "cls":
            return self.proj(x.flatten(2).mean(-1))
        return resize_bilinear(self.proj(x), size=size)


class SimpleHead(LayoutAdapter):
    """For tasks the registry doesn't know. ``dense``: 1x1 conv to ``out`` channels, upsampled to
    the input size (bilinear); ``cls``: global average pool (or mean over tokens) and a linear layer."""

    def __init__(self, in_channels: int, out: int, kind: str, layout: str, prefix_tokens: int = 0) -> None:
        super().__init__(_Proj(in_channels, out, kind), kind, layout, prefix_tokens)
