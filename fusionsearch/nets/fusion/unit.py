"""The fusion-unit contract and what the units share: ``FusionUnit`` (K task features in, K out, at
one cut point), its registry (``register_fusion``, ``get_fusion``), ``fusion_weights`` (what the
report draws of a net's units) and the helpers the unit files use (parameter groups, BatchNorm as
in the official code, 1x1 projections on any rank, resizing to the last stage).

Cut here because every unit file depends on this one and on nothing of each other: a new unit is
one file that subclasses ``FusionUnit``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionsearch.errors import PlanError
from fusionsearch.graph.layouts import FUSABLE, from_channels_first, is_map, to_channels_first
from fusionsearch.registry import Registry
from fusionsearch.tasks.resize import resize_bilinear

__all__ = [
    "FUSION_UNITS",
    "FusionUnit",
    "register_fusion",
    "get_fusion",
    "fusion_weights",
    "to_channels_first",
    "from_channels_first",
    "BN_MOMENTUM",
    "BN_EPS",
    "tagged_group",
    "rows_to_lists",
    "same_channels",
    "make_norm",
    "project_channels",
    "resize_to",
]

FUSION_UNITS: Registry[type[FusionUnit]] = Registry("fusion unit", PlanError, name_attr="unit_name")
"""The registered fusion units: name -> class (``register_fusion`` adds one)."""


def register_fusion(name: str) -> Callable[[type[FusionUnit]], type[FusionUnit]]:
    """Class decorator: make a unit available to plans, recipes and the CLI by ``name``."""
    return FUSION_UNITS.register(name)


def get_fusion(name: str | type[FusionUnit]) -> type[FusionUnit]:
    """A unit class by registered name (or the class itself)."""
    if isinstance(name, type):
        return name
    return FUSION_UNITS.get(name)


def tagged_group(params: Sequence[Tensor], lr_mult: float | None, weight_decay: float | None, tag: str) -> dict:
    """One entry of ``FusionUnit.param_groups``: the trainable ``params`` with their multiplier,
    decay and a tag naming them in the optimiser's group (``fusion:<point>:<tag>``)."""
    return {
        "params": [p for p in params if p.requires_grad],
        "lr_mult": lr_mult,
        "weight_decay": weight_decay,
        "tag": tag,
    }


class FusionUnit(nn.Module, ABC):
    """A fusion unit: K task features in, K task features out, at one cut point.

    This docstring is the whole contract; ``builder.build``, the search, training and the report rely on nothing
    else, so a new unit is one subclass with ``@register_fusion("name")`` in one file.

    Construction: ``Unit(channels, layout, *, nonnegative, init, lr_mult, weight_decay, **own)``.
    ``build`` passes exactly these (and the plan's ``unit_args``); the search sets ``init``,
    ``lr_mult`` and ``weight_decay``, so every unit accepts them:

    - ``channels``: each task's channel count at this point (K >= 2 entries).
    - ``layout``: the features' layout as the graph reports it (``layouts.Layout``).
    - ``nonnegative``: whether every task's feature here is >= 0 (after a ReLU); a unit may use it
      to keep its identity start exact (NDDR's ReLU only there).
    - ``init``: the start, ``(same, other)`` weights or a unit-specific word (``"xavier"``);
      ``identity_init`` is the value at which the unit passes each task's feature through
      unchanged (the equivalence tests build every registered unit at it).
    - ``lr_mult``: learning-rate multiplier of the unit's parameters. None: the papers' default
      for the optimiser in use, ``conventions.fusion_lr_mult(unit_name, optimizer,
      default_lr_mult)`` (``default_lr_mult`` is the SGD value of a unit that table does not know).
    - ``weight_decay``: decay of the mixing weights (None: the recipe's ``train.weight_decay``).

    Subclasses implement:

    - ``fuse(feats)``: channels-first tensors (the base class converts layouts) to
      ``(fused, extra_loss | None)``; the extra loss (sluice's orthogonality) is added to training's.
    - ``mixing_weights()``: the K x K mean mixing matrix, row i = how task i's output draws on
      each input (the report's fusion-weight figure).
    - ``channel_weights(i)``: per-channel weights of task i on its own input and on the others
      (the cross-stitch paper's Fig. 5), as two flat lists.

    and may override:

    - ``param_groups()``: parameter groups ``{"params", "lr_mult", "weight_decay", "tag"}``
      (default: one group of all parameters); ``lr_mult`` None: the optimiser's default.
    - ``head_input(channels, layout, lr_mult)`` (a class method): a module that turns a task's
      fusion outputs, one per point, into its head's input (sluice: the learned beta mix), or
      None (default: the head reads the last stage). ``lr_mult`` None: the optimiser's default
      for the module's ``lr_component`` attribute.

    BatchNorm inside a unit or a head input is "new" to warm-started columns: ``calibration``
    sets its statistics and affine parameters so the unit starts as its input mix (``bn_init``).
    """

    unit_name = "base"  # set by ``register_fusion``
    default_lr_mult = 100.0  # under SGD, for a unit ``conventions.FUSION_LR_MULT`` does not list
    identity_init: Any = (1.0, 0.0)

    def __init__(
        self,
        channels: Sequence[int],
        layout: str = "NCHW",
        *,
        nonnegative: bool = False,
        init: Any = (0.9, 0.1),
        lr_mult: float | None = None,
        weight_decay: float | None = None,
    ) -> None:
        super().__init__()
        if len(channels) < 2:
            raise PlanError(f"{self.unit_name} fuses at least 2 tasks, got {len(channels)}")
        if layout not in FUSABLE:
            raise PlanError(f"{self.unit_name} cannot fuse features of layout {layout!r}")
        self.channels = [int(c) for c in channels]
        self.layout = layout
        self.nonnegative = nonnegative
        self.init = tuple(float(v) for v in init) if isinstance(init, (list, tuple)) else init
        self.lr_mult = None if lr_mult is None else float(lr_mult)  # None: the optimiser's default
        self.weight_decay = weight_decay

    @property
    def num_tasks(self) -> int:
        return len(self.channels)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], Tensor | None]:
        """Fuse the K task features in their layout; returns (one tensor per task, extra loss or None)."""
        if len(feats) != self.num_tasks:
            raise PlanError(f"{self.unit_name} was built for {self.num_tasks} tasks, got {len(feats)} features")
        cf = [to_channels_first(f, self.layout) for f in feats]
        out, extra = self.fuse(cf)
        return [from_channels_first(o, self.layout) for o in out], extra

    @abstractmethod
    def fuse(self, feats: list[Tensor]) -> tuple[list[Tensor], Tensor | None]:
        """Fuse channels-first features; returns (one tensor per task, extra loss or None)."""

    @abstractmethod
    def mixing_weights(self) -> Tensor:
        """The K x K mean mixing matrix (detached)."""

    @abstractmethod
    def channel_weights(self, i: int) -> tuple[list[float], list[float]]:
        """Task ``i``'s per-channel weights on its own input and on the other tasks' inputs."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups: ``{"params", "lr_mult", "weight_decay", "tag"}``."""
        return [tagged_group(list(self.parameters()), self.lr_mult, self.weight_decay, self.unit_name)]

    @classmethod
    def head_input(cls, channels: Sequence[int], layout: str, lr_mult: float | None) -> nn.Module | None:
        """A module making a task's head input from its fusion outputs (``channels``: each
        point's channels for this task, the last stage's last), or None: the last stage."""
        return None


def fusion_weights(net: Any) -> dict[str, Any]:
    """The learned fusion weights of a stitched net, per fusion point (what the report draws).

    Per point: the unit, the K x K mean mixing matrix and, per task, the per-channel weights on
    its own column and on the other columns.
    """
    out: dict[str, Any] = {}
    for point, unit in net.fusion_units().items():
        entry: dict[str, Any] = {"unit": unit.unit_name, "matrix": unit.mixing_weights().tolist(), "tasks": {}}
        for i, task in enumerate(net.task_names):
            same, other = unit.channel_weights(i)
            entry["tasks"][task] = {"same": sorted(same), "other": sorted(other)}
        entry["k"] = unit.num_tasks
        out[point] = entry
    return out


def rows_to_lists(rows: Sequence[Tensor], i: int) -> tuple[list[float], list[float]]:
    """``rows[j]``: task i's weights on input j; own input and the others', flattened."""
    same = rows[i].detach().flatten().tolist()
    other = torch.cat([rows[j].detach().flatten() for j in range(len(rows)) if j != i]).tolist()
    return same, other


# BatchNorm of NDDR and its shortcut as in the official code: slim's batch_norm with decay 0.95
# (torch momentum 0.05) and slim's default epsilon 1e-3; the PyTorch port uses the same values
BN_MOMENTUM = 0.05
BN_EPS = 1e-3


def make_norm(kind: str, channels: int, layout: str, momentum: float = BN_MOMENTUM, eps: float = BN_EPS) -> nn.Module:
    """A unit's normalisation: ``"bn"`` (2d for maps, 1d for tokens, the official constants by
    default) or ``"none"``."""
    if kind == "bn":
        bn = nn.BatchNorm2d if is_map(layout) else nn.BatchNorm1d
        return bn(channels, eps=eps, momentum=momentum)
    if kind == "none":
        return nn.Identity()
    raise PlanError(f"unknown norm {kind!r} for a fusion unit: use 'bn' or 'none'")


def project_channels(x: Tensor, weight: Tensor) -> Tensor:
    """A 1x1 convolution on channels-first features of any rank."""
    return torch.einsum("oc,bc...->bo...", weight, x) if x.dim() != 4 else F.conv2d(x, weight[:, :, None, None])


def same_channels(unit: str, channels: list[int]) -> int:
    """The one channel count of units that mix channel by channel (cross-stitch, sluice)."""
    if len(set(channels)) != 1:
        raise PlanError(
            f"{unit} mixes channel by channel and needs equal channel counts in every column, got"
            f" {channels}; use 'nddr', which maps sum(C_k) -> C_i"
        )
    return channels[0]


def resize_to(x: Tensor, layout: str, size: tuple[int, ...], mode: str = "half_pixel") -> Tensor:
    """Channels-first feature resized (bilinear) to ``size``; token features must already match."""
    if x.shape[2:] == size:
        return x
    if x.dim() == 4:
        return resize_bilinear(x, size, mode)
    raise PlanError(
        f"cannot resize {layout} features of shape {tuple(x.shape[1:])} to {size}: the shortcut needs"
        " spatial maps or equal token counts"
    )
