"""What the columns learn: the label kinds (``labels``), the task contract and registry (``task``),
the built-in tasks with their heads, losses and metrics (``dense``: per pixel; ``per_image``;
``attributes``: multi-label; ``box_attributes``: per-box attributes; ``detection``: boxes, with
VOC AP from ``voc``; ``pascal``: human parts and saliency; ``points``: landmarks), Delta-m over the
tasks' metrics (``delta``), the resizing of dense maps that labels and heads share (``resize``), and
how task losses or gradients are combined (``weighting``). Depends on ``graph`` for nothing, on
torch (and torchvision's detection parts and region ops) only.

Exported: what a task of one's own is written with (the contracts, their registries, the label
kinds a task declares) and Delta-m; the built-in tasks are found by name (``get_task``) or
imported from their modules, the weighting methods from ``weighting``. Importing the package
registers every built-in label kind, task and weighting method. Names load on first use
(``registry.lazy_exports``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusionsearch.registry import lazy_exports

if TYPE_CHECKING:
    from fusionsearch.tasks.boxes import BOXES
    from fusionsearch.tasks.delta import delta_m
    from fusionsearch.tasks.labels import LABEL_KINDS, LabelKind, get_label_kind, register_label_kind
    from fusionsearch.tasks.points import POINTS
    from fusionsearch.tasks.task import (
        CLASS,
        INDEX_MAP,
        MULTI_LABEL,
        SCALAR_MAP,
        TASKS,
        VECTOR_MAP,
        Task,
        get_task,
        register_task,
    )
else:
    __getattr__, __dir__, __all__ = lazy_exports(__name__)

# importing these registers the built-ins (in this order, which `fusionsearch list` shows): a name a
# recipe or a plugin uses must be registered before it is looked up
from fusionsearch.tasks import (
    attributes,
    box_attributes,
    boxes,
    dense,
    detection,
    labels,
    pascal,
    per_image,
    points,
    task,
    weighting,
)
