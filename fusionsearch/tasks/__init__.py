"""What the columns learn: the label kinds (``labels``), the task contract and registry (``task``),
the built-in tasks with their heads, losses and metrics (``dense``: per pixel; ``per_image``;
``attributes``: multi-label; ``box_attributes``: per-box attributes; ``detection``: boxes, with
VOC AP from ``voc``; ``pascal``: human parts and saliency; ``points``: landmarks), Delta-m over the
tasks' metrics (``delta``), the resizing of dense maps that labels and heads share (``resize``), and
how task losses or gradients are combined (``weighting``). Depends on ``graph`` for nothing, on
torch (and torchvision's detection parts and region ops) only.
"""

from __future__ import annotations

from fusionsearch.tasks.attributes import Attributes, attribute_ap
from fusionsearch.tasks.box_attributes import BoxAttributes
from fusionsearch.tasks.boxes import BOXES, Boxes, RegionOutput, empty_boxes, make_boxes
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
from fusionsearch.tasks.detection import Detection, RegionHead
from fusionsearch.tasks.labels import (
    LABEL_KINDS,
    ClassLabel,
    IndexMap,
    LabelKind,
    MultiLabel,
    ScalarMap,
    VectorMap,
    get_label_kind,
    register_label_kind,
)
from fusionsearch.tasks.pascal import SALIENCY_THRESHOLDS, HumanParts, Saliency
from fusionsearch.tasks.per_image import (
    Age,
    Classification,
    ClsHead,
    Gender,
)
from fusionsearch.tasks.points import POINTS, LandmarkHead, Landmarks, Points, landmark_nme
from fusionsearch.tasks.resize import (
    RESIZES,
    interpolation_matrix,
    resize_bilinear,
)
from fusionsearch.tasks.task import (
    CLASS,
    INDEX_MAP,
    MULTI_LABEL,
    SCALAR_MAP,
    TASKS,
    UNLABELLED_CLASS,
    VECTOR_MAP,
    Task,
    get_task,
    label_kind,
    register_task,
    task_arguments,
    task_class,
    unlabelled_like,
)
from fusionsearch.tasks.voc import VOCEvaluator, voc_ap
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
    "MULTI_LABEL",
    "LabelKind",
    "register_label_kind",
    "get_label_kind",
    "IndexMap",
    "ScalarMap",
    "VectorMap",
    "ClassLabel",
    "MultiLabel",
    "Boxes",
    "BOXES",
    "empty_boxes",
    "make_boxes",
    "Detection",
    "RegionHead",
    "RegionOutput",
    "VOCEvaluator",
    "voc_ap",
    "label_kind",
    "task_class",
    "task_arguments",
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
    "ClsHead",
    "Attributes",
    "attribute_ap",
    "BoxAttributes",
    "HumanParts",
    "Saliency",
    "SALIENCY_THRESHOLDS",
    "Points",
    "POINTS",
    "Landmarks",
    "LandmarkHead",
    "landmark_nme",
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
