"""Tensor layouts, in one place: what a cut point's feature is laid out as, and how to move it.

Built on timm's own ``timm.layers.format`` (``Format``, ``get_channel_dim``, ``nchw_to``), which
covers the four layouts timm models produce; fusionsearch adds ``NC`` (pooled vectors) and
``other`` (a tensor no unit can fuse). Shapes here are per sample (no batch dimension) unless a
function says otherwise.
"""

from __future__ import annotations

from enum import Enum

from timm.layers.format import Format, get_channel_dim
from torch import Tensor

__all__ = [
    "Layout",
    "FUSABLE",
    "channels_of",
    "spatial_of",
    "is_map",
    "is_tokens",
    "to_channels_first",
    "from_channels_first",
]


class Layout(str, Enum):
    """A feature's layout (a ``str``, so that plans, JSON and recipes keep plain names)."""

    NCHW = "NCHW"  # feature maps, channels first (CNNs)
    NHWC = "NHWC"  # feature maps, channels last (timm's ConvNeXt, Swin stages)
    NLC = "NLC"  # tokens, channels last (ViT blocks)
    NCL = "NCL"  # tokens, channels first
    NC = "NC"  # one vector per sample
    OTHER = "other"  # anything else: not a fusion point


FUSABLE = (Layout.NCHW, Layout.NHWC, Layout.NLC, Layout.NCL, Layout.NC)
_CHANNELS_LAST = (Layout.NHWC, Layout.NLC)


def is_map(layout: str) -> bool:
    return layout in (Layout.NCHW, Layout.NHWC)


def is_tokens(layout: str) -> bool:
    return layout in (Layout.NLC, Layout.NCL)


def channels_of(shape: tuple[int, ...], layout: str) -> int:
    """The channel count of a per-sample shape (timm's ``get_channel_dim`` for its formats)."""
    if layout in Format.__members__:
        return shape[get_channel_dim(Format(layout)) - 1]  # timm counts the batch dimension
    return shape[0] if shape else 0


def spatial_of(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """The resolution key of a per-sample shape: (H, W) for maps, (N,) for tokens, () else."""
    if layout == Layout.NCHW:
        return tuple(shape[1:3])
    if layout == Layout.NHWC:
        return tuple(shape[0:2])
    if layout == Layout.NLC:
        return (shape[0],)
    if layout == Layout.NCL:
        return (shape[1],)
    return ()


def to_channels_first(x: Tensor, layout: str) -> Tensor:
    """A batched feature with its channels at dimension 1 (NHWC -> NCHW, NLC -> NCL)."""
    return x.movedim(-1, 1) if layout in _CHANNELS_LAST else x


def from_channels_first(x: Tensor, layout: str) -> Tensor:
    """The inverse of ``to_channels_first``."""
    return x.movedim(1, -1) if layout in _CHANNELS_LAST else x
