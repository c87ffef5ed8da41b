"""Cross-stitch units (Misra et al., Eq. 1-2): each task's output a learned mix of all tasks'
features, per channel or per layer; init (alpha_S, alpha_D) = (0.9, 0.1) and lr x10^2..10^3 as in
the paper's ablations (cross-stitch Tables 1-2).

Cut here because each unit family is one file on the ``FusionUnit`` contract (``unit``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fusionsearch.errors import PlanError
from fusionsearch.nets.fusion.unit import FusionUnit, register_fusion, rows_to_lists, same_channels

__all__ = ["CrossStitch"]


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
        c = same_channels("cross_stitch", self.channels)
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
        return rows_to_lists([self.alpha[i, j] for j in range(self.num_tasks)], i)
