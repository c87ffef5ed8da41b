"""fusionsearch: architecture search for multi-task networks over timm backbones."""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting made a 2-thread CPU forward far slower than 1 thread on
# small VMs (README, Tasks, data and training, has the figures). Passive waiting costs little elsewhere;
# it only takes effect when torch is first imported after this line, and a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fusionsearch.errors import (
    CutPointError,
    FusionSearchError,
    PlanError,
    TraceError,
    UnknownBackboneError,
)
from fusionsearch.graph.backbone import create_backbone, input_size_of
from fusionsearch.graph.cuts import BackboneGraph, trace
from fusionsearch.graph.points import Boundary, CutPoint
from fusionsearch.graph.segments import Segment, run_segments
from fusionsearch.nets.builder import build
from fusionsearch.nets.fusion import FUSION_UNITS, NDDR, CrossStitch, FusionUnit, Sluice, register_fusion
from fusionsearch.nets.io import load, save
from fusionsearch.nets.net import StitchedNet
from fusionsearch.nets.plan import StitchPlan
from fusionsearch.tasks.delta import delta_m
from fusionsearch.tasks.task import TASKS, Task, get_task, register_task

__version__ = "0.1.0"

__all__ = [
    "FUSION_UNITS",
    "TASKS",
    "Task",
    "delta_m",
    "get_task",
    "register_task",
    "NDDR",
    "CrossStitch",
    "FusionUnit",
    "Sluice",
    "StitchPlan",
    "StitchedNet",
    "build",
    "load",
    "register_fusion",
    "save",
    "BackboneGraph",
    "Boundary",
    "CutPoint",
    "CutPointError",
    "FusionSearchError",
    "PlanError",
    "Segment",
    "TraceError",
    "UnknownBackboneError",
    "create_backbone",
    "input_size_of",
    "run_segments",
    "trace",
]
