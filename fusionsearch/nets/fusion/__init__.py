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

Exported: the contract, its registry, the built-in units and ``fusion_weights``; the helpers units
share are imported from ``unit``. Names load on first use (``registry.lazy_exports``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusionsearch.registry import lazy_exports

if TYPE_CHECKING:
    from fusionsearch.nets.fusion.cross_stitch import CrossStitch
    from fusionsearch.nets.fusion.nddr import NDDR
    from fusionsearch.nets.fusion.sluice import Sluice
    from fusionsearch.nets.fusion.unit import FUSION_UNITS, FusionUnit, fusion_weights, get_fusion, register_fusion
else:
    __getattr__, __dir__, __all__ = lazy_exports(__name__)

# isort: off
# importing the units registers them; the order (nddr, cross_stitch, sluice) is the search space's
# default unit choices, so it must not be sorted
from fusionsearch.nets.fusion import nddr
from fusionsearch.nets.fusion import cross_stitch
from fusionsearch.nets.fusion import sluice

# isort: on
