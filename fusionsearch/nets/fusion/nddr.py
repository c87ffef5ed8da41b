"""NDDR (NDDR-CNN, Sec. 3.1): per task, a 1x1 conv of all tasks' concatenated features, BatchNorm
and an activation; init (alpha, beta) = (0.9, 0.1) and lr x100 as in the paper's ablations
(NDDR-CNN Tables 1-2) and the official code.

Cut here because each unit family is one file on the ``FusionUnit`` contract (``unit``); this one
holds NDDR's own start (Eq. 3) and activation choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fusionsearch.errors import PlanError
from fusionsearch.nets.fusion.unit import (
    BN_EPS,
    BN_MOMENTUM,
    FusionUnit,
    make_norm,
    project_channels,
    register_fusion,
    rows_to_lists,
    tagged_group,
)

__all__ = ["NDDR"]


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


def _act(kind: str, nonnegative: bool) -> nn.Module:
    if kind == "auto":
        kind = "relu" if nonnegative else "none"
    if kind == "relu":
        return nn.ReLU()
    if kind == "none":
        return nn.Identity()
    raise PlanError(f"unknown activation {kind!r} for a fusion unit: use 'auto', 'relu' or 'none'")


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
        self.norms = nn.ModuleList(make_norm(norm, c, layout, bn_momentum, bn_eps) for c in self.channels)
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
            y = project_channels(cat, w)
            y = act(norm(y)) if self.order == "conv-bn-act" else norm(act(y))
            out.append(y)
        return out, None

    def param_groups(self) -> list[dict[str, Any]]:
        # weight decay on the 1x1 weights (the paper's norm constraint), none on BatchNorm
        return [
            tagged_group(list(self.weights), self.lr_mult, self.weight_decay, "nddr"),
            tagged_group(list(self.norms.parameters()), self.lr_mult, 0.0, "nddr_norm"),
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
        return rows_to_lists(rows, i)
