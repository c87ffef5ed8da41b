"""Fusion units: K task features in, K task features out, at one cut point.

A unit is one class plus one ``@register_fusion`` line. Every unit works on per-task channel counts
and on the layouts the graph reports (``NCHW``, ``NHWC``, ``NLC``, ``NCL``): features are moved to
channels-first, fused, and moved back. Units return ``(features, extra_loss)`` where the extra
loss is ``None`` unless the unit has a penalty (sluice's orthogonality), and describe their own
parameter groups (learning-rate multiplier, weight decay) so training never has to guess.

Defaults come from the papers' ablations: NDDR init (alpha, beta) = (0.9, 0.1) and lr x100
(NDDR-CNN Tables 1-2); cross-stitch (alpha_S, alpha_D) = (0.9, 0.1), lr x10^2..10^3 (cross-stitch
Tables 1-2); sluice with 2 subspaces (as NDDR-CNN Sec. 5.1 follows the sluice paper). Those
multipliers are SGD settings: a unit built without ``lr_mult`` reports ``None`` and trains at
``conventions.fusion_lr_mult(unit, optimizer)``, the papers' value translated for the optimiser.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionsearch.errors import PlanError
from fusionsearch.graph.layouts import FUSABLE, from_channels_first, is_map, to_channels_first
from fusionsearch.registry import Registry
from fusionsearch.tasks.resize import RESIZES, resize_bilinear

__all__ = [
    "FUSION_UNITS",
    "FusionUnit",
    "NDDR",
    "CrossStitch",
    "Sluice",
    "ShortcutHead",
    "SluiceHeadMix",
    "register_fusion",
    "get_fusion",
    "fusion_weights",
    "to_channels_first",
    "from_channels_first",
]

FUSION_UNITS: Registry[type[FusionUnit]] = Registry("fusion unit", PlanError, name_attr="unit_name")


def register_fusion(name: str) -> Callable[[type[FusionUnit]], type[FusionUnit]]:
    """Class decorator: make a unit available to plans, recipes and the CLI by ``name``."""
    return FUSION_UNITS.register(name)


def get_fusion(name: str | type[FusionUnit]) -> type[FusionUnit]:
    """A unit class by registered name (or the class itself)."""
    if isinstance(name, type):
        return name
    return FUSION_UNITS.get(name)


def _tagged(params: Sequence[Tensor], lr_mult: float | None, weight_decay: float | None, tag: str) -> dict:
    return {
        "params": [p for p in params if p.requires_grad],
        "lr_mult": lr_mult,
        "weight_decay": weight_decay,
        "tag": tag,
    }


class FusionUnit(nn.Module, ABC):
    """A fusion unit: K task features in, K task features out, at one cut point. This docstring
    is the whole contract; ``stitch.build``, the search, training and the report rely on nothing
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
        return [_tagged(list(self.parameters()), self.lr_mult, self.weight_decay, self.unit_name)]

    @classmethod
    def head_input(cls, channels: Sequence[int], layout: str, lr_mult: float | None) -> nn.Module | None:
        """A module making a task's head input from its fusion outputs (``channels``: each
        point's channels for this task, the last stage's last), or None: the last stage."""
        return None


def fusion_weights(net: Any) -> dict[str, Any]:
    """Per fusion point of a stitched net: the unit, the K x K mean mixing matrix and, per task,
    the per-channel weights on its own column and on the other columns (what the report draws)."""
    out: dict[str, Any] = {}
    for point, unit in net.fusion_units().items():
        entry: dict[str, Any] = {"unit": unit.unit_name, "matrix": unit.mixing_weights().tolist(), "tasks": {}}
        for i, task in enumerate(net.task_names):
            same, other = unit.channel_weights(i)
            entry["tasks"][task] = {"same": sorted(same), "other": sorted(other)}
        entry["k"] = unit.num_tasks
        out[point] = entry
    return out


def _rows_to_lists(rows: Sequence[Tensor], i: int) -> tuple[list[float], list[float]]:
    """``rows[j]``: task i's weights on input j; own input and the others', flattened."""
    same = rows[i].detach().flatten().tolist()
    other = torch.cat([rows[j].detach().flatten() for j in range(len(rows)) if j != i]).tolist()
    return same, other


def _diag_init(weight: Tensor, channels: list[int], i: int, alpha: float, beta: float) -> None:
    """Eq. 3 of NDDR-CNN: alpha on the own task's identity block, beta spread over the others."""
    k = len(channels)
    other = beta / (k - 1)
    with torch.no_grad():
        weight.zero_()
        start = 0
        for j, c in enumerate(channels):
            n = min(c, weight.shape[0])
            idx = torch.arange(n)
            weight[idx, start + idx] = alpha if j == i else other
            start += c


# BatchNorm of NDDR and its shortcut as in the official code: slim's batch_norm with decay 0.95
# (torch momentum 0.05) and slim's default epsilon 1e-3; the PyTorch port uses the same values
BN_MOMENTUM = 0.05
BN_EPS = 1e-3


def _norm(kind: str, channels: int, layout: str, momentum: float = BN_MOMENTUM, eps: float = BN_EPS) -> nn.Module:
    if kind == "bn":
        bn = nn.BatchNorm2d if is_map(layout) else nn.BatchNorm1d
        return bn(channels, eps=eps, momentum=momentum)
    if kind == "none":
        return nn.Identity()
    raise PlanError(f"unknown norm {kind!r} for a fusion unit: use 'bn' or 'none'")


def _act(kind: str, nonnegative: bool) -> nn.Module:
    if kind == "auto":
        kind = "relu" if nonnegative else "none"
    if kind == "relu":
        return nn.ReLU()
    if kind == "none":
        return nn.Identity()
    raise PlanError(f"unknown activation {kind!r} for a fusion unit: use 'auto', 'relu' or 'none'")


def _project(x: Tensor, weight: Tensor) -> Tensor:
    """A 1x1 convolution on channels-first features of any rank."""
    return torch.einsum("oc,bc...->bo...", weight, x) if x.dim() != 4 else F.conv2d(x, weight[:, :, None, None])


@register_fusion("nddr")
class NDDR(FusionUnit):
    """Neural Discriminative Dimensionality Reduction (NDDR-CNN, Sec. 3.1).

    Per task i: concatenate the K features on channels, 1x1 conv sum(C_k) -> C_i without bias,
    BatchNorm, activation. ``act="auto"`` uses a ReLU only where the cut point's features are
    non-negative (VGG, ResNet), so that identity init is the identity on ConvNeXt or ViT features
    too. ``order="conv-bn-act"`` (the paper) or ``"conv-act-bn"``.

    Defaults are the official code's (ethanygao/NDDR-CNN ``nets/nddr_layer.py`` in slim's
    ``vgg_arg_scope``): init (0.9, 0.1), BatchNorm momentum 0.05 (decay 0.95) and eps 1e-3, lr x100
    (``--nddr-mult``), and the 1x1 weights decayed like every other conv weight: ``weight_decay=None``
    follows the recipe's ``train.weight_decay`` (2.5e-4 in the paper recipes, the official
    0.5 x 5e-4 x l2_loss); a number sets the unit's own. BatchNorm parameters are never decayed.
    With K > 2 tasks each other task's block starts at beta / (K - 1), so a row sums to alpha + beta.
    """

    def __init__(
        self,
        channels: Sequence[int],
        layout: str = "NCHW",
        *,
        init: tuple[float, float] | str = (0.9, 0.1),
        norm: str = "bn",
        act: str = "auto",
        order: str = "conv-bn-act",
        nonnegative: bool = False,
        lr_mult: float | None = None,
        weight_decay: float | None = None,
        bn_momentum: float = BN_MOMENTUM,
        bn_eps: float = BN_EPS,
    ) -> None:
        super().__init__(
            channels, layout, nonnegative=nonnegative, init=init, lr_mult=lr_mult, weight_decay=weight_decay
        )
        if order not in ("conv-bn-act", "conv-act-bn"):
            raise PlanError(f"NDDR order must be 'conv-bn-act' or 'conv-act-bn', got {order!r}")
        total = sum(self.channels)
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(c, total)) for c in self.channels)
        self.norms = nn.ModuleList(_norm(norm, c, layout, bn_momentum, bn_eps) for c in self.channels)
        self.acts = nn.ModuleList(_act(act, nonnegative) for _ in self.channels)
        self.order = order
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for i, w in enumerate(self.weights):
            if self.init == "xavier":
                nn.init.xavier_uniform_(w)
            elif isinstance(self.init, (tuple, list)) and len(self.init) == 2:
                _diag_init(w, self.channels, i, float(self.init[0]), float(self.init[1]))
            else:
                raise PlanError(f"NDDR init must be (alpha, beta) or 'xavier', got {self.init!r}")

    def fuse(self, feats: list[Tensor]) -> tuple[list[Tensor], Tensor | None]:
        cat = torch.cat(feats, dim=1)
        out = []
        for w, norm, act in zip(self.weights, self.norms, self.acts):
            y = _project(cat, w)
            y = act(norm(y)) if self.order == "conv-bn-act" else norm(act(y))
            out.append(y)
        return out, None

    def param_groups(self) -> list[dict[str, Any]]:
        # weight decay on the 1x1 weights (the paper's norm constraint), none on BatchNorm
        return [
            _tagged(list(self.weights), self.lr_mult, self.weight_decay, "nddr"),
            _tagged(list(self.norms.parameters()), self.lr_mult, 0.0, "nddr_norm"),
        ]

    def mixing_weights(self) -> Tensor:
        k = self.num_tasks
        out = torch.zeros(k, k)
        for i, w in enumerate(self.weights):
            start = 0
            for j, c in enumerate(self.channels):
                n = min(c, w.shape[0])
                out[i, j] = w.detach()[torch.arange(n), start + torch.arange(n)].mean()
                start += c
        return out

    def channel_weights(self, i: int) -> tuple[list[float], list[float]]:
        # the diagonal of each block of task i's projection: channel c of input j -> channel c
        w = self.weights[i].detach()
        start, rows = 0, []
        for c in self.channels:
            n = min(c, w.shape[0])
            rows.append(w[torch.arange(n), start + torch.arange(n)])
            start += c
        return _rows_to_lists(rows, i)


def _same_channels(unit: str, channels: list[int]) -> int:
    if len(set(channels)) != 1:
        raise PlanError(
            f"{unit} mixes channel by channel and needs equal channel counts in every column, got"
            f" {channels}; use 'nddr', which maps sum(C_k) -> C_i"
        )
    return channels[0]


@register_fusion("cross_stitch")
class CrossStitch(FusionUnit):
    """Cross-stitch unit (Misra et al., Eq. 1-2): out_i = sum_j alpha_ij x_j.

    ``per="channel"`` learns one K x K matrix per channel (the paper's choice for conv layers),
    ``per="layer"`` one for the whole layer. It equals NDDR restricted to diagonal blocks without
    BatchNorm and activation.

    ``init=(alpha_S, alpha_D)``; with K > 2 tasks ``off_diagonal="split"`` (default, as NDDR) gives
    each other task alpha_D / (K - 1), so a row sums to alpha_S + alpha_D whatever K is;
    ``"each"`` gives every other task alpha_D, as the survey code (Vandenhende et al.,
    ``models/cross_stitch.py``) and LibMTL (all ones) do. The two agree for K = 2.
    """

    def __init__(
        self,
        channels: Sequence[int],
        layout: str = "NCHW",
        *,
        init: tuple[float, float] = (0.9, 0.1),
        per: str = "channel",
        off_diagonal: str = "split",
        nonnegative: bool = False,
        lr_mult: float | None = None,
        weight_decay: float | None = 0.0,
    ) -> None:
        super().__init__(
            channels, layout, nonnegative=nonnegative, init=init, lr_mult=lr_mult, weight_decay=weight_decay
        )
        c = _same_channels("cross_stitch", self.channels)
        if per not in ("channel", "layer"):
            raise PlanError(f"cross_stitch per must be 'channel' or 'layer', got {per!r}")
        k = self.num_tasks
        if off_diagonal not in ("split", "each"):
            raise PlanError(f"cross_stitch off_diagonal must be 'split' or 'each', got {off_diagonal!r}")
        self.per = per
        self.off_diagonal = off_diagonal
        self.alpha = nn.Parameter(torch.empty(k, k, c if per == "channel" else 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        k = self.num_tasks
        same, diff = self.init
        with torch.no_grad():
            self.alpha.fill_(diff / (k - 1) if self.off_diagonal == "split" else diff)
            for i in range(k):
                self.alpha[i, i] = same

    def fuse(self, feats: list[Tensor]) -> tuple[list[Tensor], Tensor | None]:
        shape = (1, -1) + (1,) * (feats[0].dim() - 2)
        out = []
        for i in range(self.num_tasks):
            y = feats[0] * self.alpha[i, 0].view(shape)
            for j in range(1, self.num_tasks):
                y = y + feats[j] * self.alpha[i, j].view(shape)
            out.append(y)
        return out, None

    def mixing_weights(self) -> Tensor:
        return self.alpha.detach().mean(-1)

    def channel_weights(self, i: int) -> tuple[list[float], list[float]]:
        return _rows_to_lists([self.alpha[i, j] for j in range(self.num_tasks)], i)


@register_fusion("sluice")
class Sluice(FusionUnit):
    """Sluice unit (Ruder et al.): each task's channels split into ``subspaces`` parts, all K*m
    parts mixed by a learned (K m) x (K m) matrix; the extra loss is the orthogonality penalty
    ``weight * sum_k sum_{a<b} ||G_ka^T G_kb||_F^2`` between a task's subspaces (G: positions x
    channels, averaged over positions so the weight does not depend on the image size).
    """

    def __init__(
        self,
        channels: Sequence[int],
        layout: str = "NCHW",
        *,
        subspaces: int = 2,
        init: tuple[float, float] = (0.9, 0.1),
        orthogonality: float = 0.1,
        nonnegative: bool = False,
        lr_mult: float | None = None,
        weight_decay: float | None = 0.0,
    ) -> None:
        super().__init__(
            channels, layout, nonnegative=nonnegative, init=init, lr_mult=lr_mult, weight_decay=weight_decay
        )
        c = _same_channels("sluice", self.channels)
        if subspaces < 1 or c % subspaces:
            raise PlanError(f"sluice: {c} channels cannot be split into {subspaces} equal subspaces")
        self.subspaces = subspaces
        self.orthogonality = float(orthogonality)
        n = self.num_tasks * subspaces
        self.alpha = nn.Parameter(torch.empty(n, n))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        k, m = self.num_tasks, self.subspaces
        same, diff = self.init
        with torch.no_grad():
            self.alpha.zero_()
            for i in range(k):
                for j in range(k):
                    for s in range(m):  # subspace s of task j feeds subspace s of task i
                        self.alpha[i * m + s, j * m + s] = same if i == j else diff / (k - 1)

    def fuse(self, feats: list[Tensor]) -> tuple[list[Tensor], Tensor | None]:
        m = self.subspaces
        parts = [p for f in feats for p in f.chunk(m, dim=1)]
        mixed = []
        for r in range(len(parts)):
            y = parts[0] * self.alpha[r, 0]
            for q in range(1, len(parts)):
                y = y + parts[q] * self.alpha[r, q]
            mixed.append(y)
        out = [torch.cat(mixed[i * m : (i + 1) * m], dim=1) for i in range(self.num_tasks)]
        extra = None
        if self.orthogonality and m > 1:
            penalty = feats[0].new_zeros(())
            for i in range(self.num_tasks):
                g = [p.movedim(1, -1).reshape(-1, p.shape[1]) for p in mixed[i * m : (i + 1) * m]]
                for a, b in combinations(g, 2):
                    penalty = penalty + ((a.T @ b) / a.shape[0]).pow(2).sum()
            extra = self.orthogonality * penalty
        return out, extra

    def _blocks(self) -> Tensor:
        """(K, K, m): how subspace s of task i draws on subspace s of task j."""
        k, m = self.num_tasks, self.subspaces
        return self.alpha.detach().view(k, m, k, m).diagonal(dim1=1, dim2=3)

    def mixing_weights(self) -> Tensor:
        return self._blocks().mean(-1)

    def channel_weights(self, i: int) -> tuple[list[float], list[float]]:
        blocks = self._blocks()
        return _rows_to_lists([blocks[i, j] for j in range(self.num_tasks)], i)

    @classmethod
    def head_input(cls, channels: Sequence[int], layout: str, lr_mult: float | None) -> nn.Module | None:
        """The sluice paper's learned beta mix of the task's layer outputs."""
        return SluiceHeadMix(channels, layout, lr_mult=lr_mult)


def _resize_to(x: Tensor, layout: str, size: tuple[int, ...], mode: str = "half_pixel") -> Tensor:
    """Channels-first feature resized (bilinear) to ``size``; token features must already match."""
    if x.shape[2:] == size:
        return x
    if x.dim() == 4:
        return resize_bilinear(x, size, mode)
    raise PlanError(
        f"cannot resize {layout} features of shape {tuple(x.shape[1:])} to {size}: the shortcut needs"
        " spatial maps or equal token counts"
    )


SHORTCUT_INITS = ("xavier", "identity")


class ShortcutHead(nn.Module):
    """NDDR-CNN-Shortcut (Sec. 3.3) for one task: every fusion output resized to the last stage's
    size, concatenated, reduced to ``out_channels`` by this task's own 1x1 conv.

    ``init="xavier"`` (default) is the official code's layer (``vgg_deeplab_nddr.py``:
    ``slim.conv2d`` in the NDDR arg scope): 1x1 conv without bias, Xavier-initialised, BatchNorm
    (momentum 0.05, eps 1e-3), ReLU, resized with ``resize="tf_legacy"`` (TF 1.4's
    ``resize_bilinear``), trained at the fusion units' learning rate (its scope is named
    ``nddr_shortcut``: the x100 group under SGD; ``lr_mult=None`` takes the optimiser's default).
    ``init="identity"`` is a bare 1x1 conv that starts as the identity on the last stage's
    channels (zeros elsewhere), so that adding the shortcut does not change a network's output
    until it learns to use the lower levels.
    """

    lr_component = "shortcut"  # ``lr_mult=None`` trains at conventions.fusion_lr_mult("shortcut", optimizer)

    def __init__(
        self,
        channels: Sequence[int],
        out_channels: int,
        layout: str,
        lr_mult: float | None = None,
        init: str = "xavier",
        resize: str = "tf_legacy",
        weight_decay: float | None = None,
    ) -> None:
        super().__init__()
        if init not in SHORTCUT_INITS:
            raise PlanError(f"shortcut init must be {' or '.join(SHORTCUT_INITS)}, got {init!r}")
        if resize not in RESIZES:
            raise PlanError(f"shortcut resize must be one of {', '.join(RESIZES)}, got {resize!r}")
        self.layout = layout
        self.channels = [int(c) for c in channels]
        self.lr_mult = lr_mult
        self.init = init
        self.resize = resize
        self.weight_decay = weight_decay
        self.proj = nn.Conv2d(sum(self.channels), out_channels, 1, bias=False)
        if init == "identity":
            self.norm: nn.Module = nn.Identity()
            self.act: nn.Module = nn.Identity()
            with torch.no_grad():
                self.proj.weight.zero_()
                last = self.channels[-1]
                n = min(last, out_channels)
                self.proj.weight[torch.arange(n), sum(self.channels[:-1]) + torch.arange(n), 0, 0] = 1.0
        else:
            nn.init.xavier_uniform_(self.proj.weight)
            self.norm = _norm("bn", out_channels, "NCHW")
            self.act = nn.ReLU()

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        cf = [to_channels_first(f, self.layout) for f in feats]
        size = tuple(cf[-1].shape[2:])
        cat = torch.cat([_resize_to(f, self.layout, size, self.resize) for f in cf], dim=1)
        y = _project(cat, self.proj.weight[:, :, 0, 0])
        if not isinstance(self.norm, nn.Identity):
            y = self.norm(y) if y.dim() != 3 else self.norm(y[..., None])[..., 0]
        return from_channels_first(self.act(y), self.layout)

    def param_groups(self) -> list[dict[str, Any]]:
        """The conv weight decayed (None: the recipe's rate), BatchNorm not, both at ``lr_mult``."""
        return [
            _tagged([self.proj.weight], self.lr_mult, self.weight_decay, "shortcut"),
            _tagged(list(self.norm.parameters()), self.lr_mult, 0.0, "shortcut_norm"),
        ]


class SluiceHeadMix(nn.Module):
    """Sluice's learned beta mixing of a task's layer outputs, for CNN stages of different sizes:
    head input = sum_l beta_l * P_l(resize(h_l)), P_l a 1x1 projection to the last stage's
    channels (the identity for the last stage). beta starts at (0, ..., 0, 1): the last stage only.
    """

    lr_component = "sluice_beta"  # ``lr_mult=None``: conventions.fusion_lr_mult("sluice_beta", optimizer)

    def __init__(self, channels: Sequence[int], layout: str, lr_mult: float | None = None) -> None:
        super().__init__()
        self.layout = layout
        self.lr_mult = lr_mult
        last = int(channels[-1])
        self.projs = nn.ModuleList(nn.Conv2d(int(c), last, 1, bias=False) for c in channels[:-1])
        beta = torch.zeros(len(channels))
        beta[-1] = 1.0
        self.beta = nn.Parameter(beta)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        cf = [to_channels_first(f, self.layout) for f in feats]
        size = tuple(cf[-1].shape[2:])
        y = cf[-1] * self.beta[-1]
        for b, proj, f in zip(self.beta[:-1], self.projs, cf[:-1]):
            y = y + b * _project(_resize_to(f, self.layout, size), cast(nn.Conv2d, proj).weight[:, :, 0, 0])
        return from_channels_first(y, self.layout)
