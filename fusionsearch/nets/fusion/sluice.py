"""Sluice networks (Ruder et al.): the sluice unit (each task's channels split into subspaces, all of
them mixed, an orthogonality penalty between a task's subspaces; 2 subspaces, as NDDR-CNN Sec. 5.1
follows the sluice paper) and its learned beta mix of a task's layer outputs for the head.

Cut here because each unit family is one file on the ``FusionUnit`` contract (``unit``); the beta
mix is sluice's ``head_input`` hook, so it lives with the unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import cast

import torch
from torch import Tensor, nn

from fusionsearch.errors import PlanError
from fusionsearch.graph.layouts import from_channels_first, to_channels_first
from fusionsearch.nets.fusion.unit import (
    FusionUnit,
    project_channels,
    register_fusion,
    resize_to,
    rows_to_lists,
    same_channels,
)

__all__ = ["Sluice", "SluiceHeadMix"]


@register_fusion("sluice")
class Sluice(FusionUnit):
    """Sluice unit (Ruder et al.): subspaces of every task's channels mixed by one learned matrix.

    Sluice unit (Ruder et al.): each task's channels split into ``subspaces`` parts, all K*m
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
        c = same_channels("sluice", self.channels)
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
        return rows_to_lists([blocks[i, j] for j in range(self.num_tasks)], i)

    @classmethod
    def head_input(cls, channels: Sequence[int], layout: str, lr_mult: float | None) -> nn.Module | None:
        """The sluice paper's learned beta mix of the task's layer outputs."""
        return SluiceHeadMix(channels, layout, lr_mult=lr_mult)


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
            y = y + b * project_channels(resize_to(f, self.layout, size), cast(nn.Conv2d, proj).weight[:, :, 0, 0])
        return from_channels_first(y, self.layout)
