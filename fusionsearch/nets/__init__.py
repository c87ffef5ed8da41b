"""Stitched multi-task networks: the fusion units (``fusion``), the task heads behind an adapter for
every layout (``heads``), the plan, the net, its build, save and load (``stitch``), and the fusion
learning-rate conventions per optimiser (``conventions``). Built on ``graph`` and ``tasks``.
"""

from __future__ import annotations

from fusionsearch.nets.conventions import (
    FUSION_LR_MULT,
    OPTIMIZERS,
    PAPER_OPTIMIZER,
    describe_bn_init,
    describe_lr_mults,
    fusion_lr_mult,
)
from fusionsearch.nets.fusion import (
    FUSION_UNITS,
    NDDR,
    CrossStitch,
    FusionUnit,
    ShortcutHead,
    Sluice,
    SluiceHeadMix,
    from_channels_first,
    fusion_weights,
    get_fusion,
    register_fusion,
    to_channels_first,
)
from fusionsearch.nets.heads import (
    CLASSIFICATION_TASKS,
    LayoutAdapter,
    SimpleHead,
    task_kind,
    tokens_to_map,
)
from fusionsearch.nets.stitch import (
    SAFE_CREATE_KWARGS,
    StitchedNet,
    StitchMeta,
    StitchPlan,
    build,
    load,
    parse_tasks,
    save,
)

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
    "CLASSIFICATION_TASKS",
    "task_kind",
    "SimpleHead",
    "LayoutAdapter",
    "tokens_to_map",
    "StitchPlan",
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
