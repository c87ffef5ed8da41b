"""Stitched multi-task networks: the fusion units, one file per family (``fusion``), the task heads
behind an adapter for every layout (``heads``), the plan (``plan``), the net (``net``), its build
(``builder``), its saved file (``io``), and the fusion learning-rate conventions per optimiser
(``conventions``). Built on ``graph`` and ``tasks``.
"""

from __future__ import annotations

from fusionsearch.nets.builder import build
from fusionsearch.nets.conventions import (
    FUSION_LR_MULT,
    OPTIMIZERS,
    PAPER_OPTIMIZER,
    describe_bn_init,
    describe_lr_mults,
    fusion_lr_mult,
)
from fusionsearch.nets.fusion import (
    BN_EPS,
    BN_MOMENTUM,
    FUSION_UNITS,
    NDDR,
    SHORTCUT_INITS,
    CrossStitch,
    FusionUnit,
    ShortcutHead,
    Sluice,
    SluiceHeadMix,
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
from fusionsearch.nets.heads import (
    LayoutAdapter,
    SimpleHead,
    head_kind,
    tokens_to_map,
)
from fusionsearch.nets.io import SAFE_CREATE_KWARGS, load, save
from fusionsearch.nets.net import StitchedNet
from fusionsearch.nets.plan import StitchMeta, StitchPlan, parse_tasks
from fusionsearch.nets.supernet import NONE_UNIT, SuperNet, plan_of, recalibrate_batchnorm

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
    "head_kind",
    "SimpleHead",
    "LayoutAdapter",
    "tokens_to_map",
    "StitchPlan",
    "NONE_UNIT",
    "SuperNet",
    "plan_of",
    "recalibrate_batchnorm",
    "StitchedNet",
    "StitchMeta",
    "build",
    "save",
    "load",
    "parse_tasks",
    "SAFE_CREATE_KWARGS",
    "OPTIMIZERS",
    "PAPER_OPTIMIZER",
    "FUSION_LR_MULT",
    "fusion_lr_mult",
    "describe_lr_mults",
    "describe_bn_init",
]
