"""What the columns learn: the task contract and registry with the label kinds (``task``), the
built-in tasks with their heads, losses and metrics (``dense``: per pixel; ``per_image``), Delta-m
over the tasks' metrics (``delta``), the resizing of dense maps that labels and heads share
(``resize``), and how task losses or gradients are combined (``weighting``). Depends on ``graph``
for nothing, on torch only.
"""

from __future__ import annotations

from fusionsearch.tasks.delta import (
    DeltaM,
    delta_m,
    primary_metric,
)
from fusionsearch.tasks.dense import (
    ASPPHead,
    Depth,
    Normals,
    Segmentation,
)
from fusionsearch.tasks.per_image import (
    Age,
    Classification,
    Gender,
)
from fusionsearch.tasks.resize import (
    RESIZES,
    interpolation_matrix,
    resize_bilinear,
)
from fusionsearch.tasks.task import (
    CLASS,
    INDEX_MAP,
    LABEL_KINDS,
    SCALAR_MAP,
    TASKS,
    UNLABELLED_CLASS,
    VECTOR_MAP,
    Task,
    get_task,
    label_kind,
    register_task,
    unlabelled_like,
)
from fusionsearch.tasks.weighting import (
    GRADIENT_LEVEL,
    LOSS_LEVEL,
    WEIGHTINGS,
    GradientWeighting,
    Weighting,
    get_weighting,
    make_weighting,
    register_weighting,
)

__all__ = [
    "TASKS",
    "Task",
    "LABEL_KINDS",
    "INDEX_MAP",
    "SCALAR_MAP",
    "VECTOR_MAP",
    "CLASS",
    "label_kind",
    "UNLABELLED_CLASS",
    "unlabelled_like",
    "register_task",
    "get_task",
    "delta_m",
    "DeltaM",
    "primary_metric",
    "ASPPHead",
    "Segmentation",
    "Normals",
    "Depth",
    "Classification",
    "Age",
    "Gender",
    "RESIZES",
    "resize_bilinear",
    "interpolation_matrix",
    "WEIGHTINGS",
    "Weighting",
    "GradientWeighting",
    "register_weighting",
    "get_weighting",
    "make_weighting",
    "LOSS_LEVEL",
    "GRADIENT_LEVEL",
]
