"""Stitched multi-task networks: the fusion units, one file per family (``fusion``), the task heads
behind an adapter for every layout (``heads``), the plan (``plan``), the net (``net``), its build
(``builder``), its saved file (``io``), the fusion learning-rate conventions per optimiser
(``conventions``), and the weight-sharing supernet (``supernet``). Built on ``graph`` and ``tasks``.

Exported: the plan, the net, its build, its file, and the supernet; the units' contract and
registry are ``fusionsearch.nets.fusion``'s, the rest is imported from its module. Names load on
first use (``registry.lazy_exports``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusionsearch.registry import lazy_exports

if TYPE_CHECKING:
    from fusionsearch.nets.builder import build
    from fusionsearch.nets.io import load, save
    from fusionsearch.nets.net import StitchedNet
    from fusionsearch.nets.plan import StitchPlan
    from fusionsearch.nets.supernet import SuperNet
else:
    __getattr__, __dir__, __all__ = lazy_exports(__name__)
