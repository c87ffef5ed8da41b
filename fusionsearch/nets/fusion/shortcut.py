"""The NDDR-CNN-Shortcut head input (Sec. 3.3): every fusion output of a task resized to the last
stage's size, concatenated and reduced by a 1x1 conv (the official conv-BN-ReLU, or a bare conv
that starts as the identity).

Cut here because the shortcut is not a unit but a per-task head input that any unit's plan can
ask for (``StitchPlan.shortcut``); it shares only the helpers in ``unit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fusionsearch.errors import PlanError
from fusionsearch.graph.layouts import from_channels_first, to_channels_first
from fusionsearch.nets.fusion.unit import make_norm, project_channels, resize_to, tagged_group
from fusionsearch.tasks.resize import RESIZES

__all__ = ["ShortcutHead", "SHORTCUT_INITS"]

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
            self.norm = make_norm("bn", out_channels, "NCHW")
            self.act = nn.ReLU()

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        cf = [to_channels_first(f, self.layout) for f in feats]
        size = tuple(cf[-1].shape[2:])
        cat = torch.cat([resize_to(f, self.layout, size, self.resize) for f in cf], dim=1)
        y = project_channels(cat, self.proj.weight[:, :, 0, 0])
        if not isinstance(self.norm, nn.Identity):
            y = self.norm(y) if y.dim() != 3 else self.norm(y[..., None])[..., 0]
        return from_channels_first(self.act(y), self.layout)

    def param_groups(self) -> list[dict[str, Any]]:
        """The conv weight decayed (None: the recipe's rate), BatchNorm not, both at ``lr_mult``."""
        return [
            tagged_group([self.proj.weight], self.lr_mult, self.weight_decay, "shortcut"),
            tagged_group(list(self.norm.parameters()), self.lr_mult, 0.0, "shortcut_norm"),
        ]
