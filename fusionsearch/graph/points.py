"""The places a traced backbone can be cut: :class:`CutPoint` and the stage :class:`Boundary`.

Plain frozen values, apart from the tracing that finds them (``cuts``) and the analysis that
fills them in (``_analysis``, ``_stages``), so that both can build them without importing each
other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fusionsearch.graph.layouts import spatial_of

__all__ = ["Boundary", "CutPoint"]


@dataclass(frozen=True)
class CutPoint:
    """A place where the backbone can be cut: one tensor that every path goes through.

    ``shape`` excludes the batch; ``channels`` is the feature axis' size for the ``layout``
    (``NCHW``, ``NHWC``, ``NLC`` for tokens, ``NCL``, ``NC``); ``reduction`` is input size over
    feature size (None where that has no meaning); ``nonnegative`` says the values were all >= 0
    on the example input (the output of a ReLU or a max-pool after one), which fusion units read to
    decide whether a ReLU keeps their identity init an identity.
    """

    name: str
    node: str
    index: int
    shape: tuple[int, ...]
    layout: str
    channels: int
    reduction: int | None
    nonnegative: bool
    params_before: int
    aliases: tuple[str, ...] = ()

    @property
    def spatial(self) -> tuple[int, ...]:
        """The resolution key: (H, W) for maps, (N,) for tokens, () for vectors."""
        return spatial_of(tuple(self.shape), self.layout)

    def to_dict(self) -> dict[str, Any]:
        """The cut point as plain data."""
        return asdict(self)


@dataclass(frozen=True)
class Boundary(CutPoint):
    """A stage boundary: the last cut point of a stage (``kind="end"``), or, for the VGG paper's
    pool1..pool5 placement, the first cut point after a downsampling (``kind="start"``)."""

    stage: int = 0
    kind: str = "end"
