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

One file per unit family on the contract in ``unit``: ``nddr``, ``cross_stitch``, ``sluice`` (with
its head-input mix), and ``shortcut`` (the NDDR-CNN-Shortcut head input). Importing this package
registers every unit, in the order the search space lists them (``[none, *FUSION_UNITS]``).
"""

from __future__ import annotations

# isort: off
# the import order is the registration order (nddr, cross_stitch, sluice): the search space's
# default unit choices follow it, so it must not be sorted
from fusionsearch.nets.fusion.unit import (
    BN_EPS,
    BN_MOMENTUM,
    FUSION_UNITS,
    FusionUnit,
    from_channels_first,
    fusion_weights,
    get_fusion,
    make_norm,
    project_channels,
    register_fusion,
    resize_to,
    rows_to_lists,
    same_channels,
    tagged_group,
    to_channels_first,
)
from fusionsearch.nets.fusion.nddr import NDDR
from fusionsearch.nets.fusion.cross_stitch import CrossStitch
from fusionsearch.nets.fusion.sluice import Sluice, SluiceHeadMix
from fusionsearch.nets.fusion.shortcut import SHORTCUT_INITS, ShortcutHead

# isort: on

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
    "SHORTCUT_INITS",
    "BN_MOMENTUM",
    "BN_EPS",
    "tagged_group",
    "rows_to_lists",
    "same_channels",
    "make_norm",
    "project_channels",
    "resize_to",
]
