"""Task weighting and gradient balancing: how K task losses become one update.

A method is one ``Weighting`` subclass with ``@register_weighting("name")``; training, recipes
(``train.weighting: {name: ..., args: {...}}``), ``fusionsearch train --weighting NAME`` and the
search's ``weighting`` dimension find it in the registry.

Two levels:

- *loss-level* methods turn the K losses into one scalar, then one backward pass: ``fixed``
  (the tasks' own ``loss_weight``), ``uncertainty`` (Kendall et al. 2018), ``dwa`` (Liu et al.
  2019), ``rlw`` (random loss weighting, Lin et al. 2022), ``gls`` (geometric loss strategy,
  Chennupati et al. 2019), ``famo`` (Liu et al. 2023). They work on any stitched net at the cost of
  ``fixed`` plus a few scalar operations.
- *gradient-level* methods (TorchJD's aggregators: ``upgrad``, ``mgda``, ``pcgrad``, ``cagrad``,
  ``aligned_mtl``, ``imtl_g``, ``nash_mtl``) take one backward pass per task. Every trainable
  parameter that more than one task's loss reaches (the shared trunk, the fusion units, and the
  columns before the last fusion unit, which the units mix into every task) gets the aggregation
  of the K task gradients; a parameter only one task reaches (its column after the last unit, its
  head) gets that task's gradient. Each task's loss includes its ``loss_weight``; an extra loss
  (sluice's penalty) is added with weight 1 on top.

Partial labels: a task that the step's batch labels on no image is absent from that step's
``losses``. It then contributes nothing (zero gradient, weight 0 for the step): loss-level methods
combine the tasks present, gradient-level methods aggregate the present tasks' gradients (one
present task: its gradient as it is), and histories (``dwa``, ``famo``) skip the absent task.

Where the implementations differ from the papers' code, the method's docstring says so.

Modules: the contract and its registry (``base``), the loss-level methods (``loss_level``), the
gradient-level ones (``gradient``: TorchJD's aggregators and DB-MTL), and a method built from a
recipe's spec with its arguments checked (``spec``). Importing the package registers every method.

Exported: the contract (``Weighting``, and ``GradientWeighting`` for a TorchJD aggregator), its
registry and levels, the range check methods share, and a method built from a spec; the built-in
methods are found by name. Names load on first use (``registry.lazy_exports``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusionsearch.registry import lazy_exports

if TYPE_CHECKING:
    from fusionsearch.tasks.weighting.base import (
        GRADIENT_LEVEL,
        LOSS_LEVEL,
        WEIGHTINGS,
        Weighting,
        check_range,
        get_weighting,
        register_weighting,
    )
    from fusionsearch.tasks.weighting.gradient import GradientWeighting
    from fusionsearch.tasks.weighting.spec import make_weighting
else:
    __getattr__, __dir__, __all__ = lazy_exports(__name__)

# importing the methods registers them (gradient-level first, the order `fusionsearch list` shows)
from fusionsearch.tasks.weighting import gradient, loss_level
