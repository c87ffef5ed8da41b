"""fusionsearch: architecture search for multi-task networks over timm backbones.

Exported: tracing a backbone and cutting it, plans, build, save and load, the fusion unit and task
contracts with their registries, Delta-m, and the errors a user can cause; each layer's own
surface is its package (``fusionsearch.search``, ``fusionsearch.report``, ...). Names load on first
use (``registry.lazy_exports``), so ``import fusionsearch`` imports neither torch nor timm until a
name needs them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# OpenMP threads that spin while waiting made a 2-thread CPU forward far slower than 1 thread on
# small VMs (README, Tasks, data and training, has the figures). Passive waiting costs little elsewhere;
# it only takes effect when torch is first imported after this line, and a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fusionsearch.registry import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fusionsearch.errors import (
        CutPointError,
        FusionSearchError,
        PlanError,
        TraceError,
        UnknownBackboneError,
    )
    from fusionsearch.graph.backbone import create_backbone
    from fusionsearch.graph.cuts import BackboneGraph, trace
    from fusionsearch.graph.points import Boundary, CutPoint
    from fusionsearch.graph.segments import Segment, run_segments
    from fusionsearch.nets.builder import build
    from fusionsearch.nets.fusion.unit import FUSION_UNITS, FusionUnit, register_fusion
    from fusionsearch.nets.io import load, save
    from fusionsearch.nets.net import StitchedNet
    from fusionsearch.nets.plan import StitchPlan
    from fusionsearch.tasks.delta import delta_m
    from fusionsearch.tasks.task import TASKS, Task, get_task, register_task
else:
    __getattr__, __dir__, __all__ = lazy_exports(__name__)
