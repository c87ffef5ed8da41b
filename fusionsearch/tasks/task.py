"""The task contract: what a task's label is (its kind, and how a data set says "no label
here"), the ``Task`` ABC that every task implements, and the registry that plans, recipes and the
CLI find tasks in by name.

The built-in tasks live beside it, by what they predict (``dense``: a value per pixel;
``per_image``: one per image), and Delta-m, which compares tasks' metrics, in ``delta``: this
module is what a new task needs to know, and nothing a particular task does.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from fusionsearch.errors import PlanError
from fusionsearch.registry import Registry
from fusionsearch.tasks.labels import (
    LABEL_KINDS,
    UNLABELLED_CLASS,
    ClassLabel,
    IndexMap,
    LabelKind,
    MultiLabel,
    ScalarMap,
    VectorMap,
    get_label_kind,
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
    "label_kind",
    "task_class",
    "task_arguments",
    "UNLABELLED_CLASS",
    "unlabelled_like",
    "register_task",
    "get_task",
]

TASKS: Registry[type[Task]] = Registry("task", PlanError, name_attr="task_name")
"""The registered tasks: name -> class (``register_task`` adds one, ``get_task`` makes one)."""


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make a task available to plans, recipes and the CLI by ``name``."""
    return TASKS.register(name)


def get_task(name: str, **kwargs: Any) -> Task:
    """A task instance by registered name; keyword arguments go to its constructor."""
    return TASKS.get(name)(**kwargs)


# The kinds of the built-in tasks, as instances (``labels`` holds the classes and the registry)
INDEX_MAP = IndexMap()
"""A per-pixel class index map (segmentation); see ``labels.IndexMap``."""
SCALAR_MAP = ScalarMap()
"""A per-pixel value map, 0 = no label (depth); see ``labels.ScalarMap``."""
VECTOR_MAP = VectorMap()
"""A per-pixel unit vector map (surface normals); see ``labels.VectorMap``."""
CLASS = ClassLabel()
"""One value per image, a class or a number (gender, age); see ``labels.ClassLabel``."""
MULTI_LABEL = MultiLabel()
"""Several binary attributes per image (CelebA); see ``labels.MultiLabel``."""


def unlabelled_like(kind: str | LabelKind, label: Any) -> Any:
    """``label`` with every value replaced by its kind's "no label here" value (255 for index maps,
    zeros for scalar and vector maps, -1 for per-image classes and numbers and for each attribute):
    how a data set says that an image carries no label for a task (``data.partial``)."""
    return get_label_kind(kind).unlabelled_like(label)


class Task(ABC):
    """A task: its label kind, head, loss and whole-set metrics.

    This docstring is the contract; a new task is one subclass with ``@register_task("name")`` in
    one file, and its items' key in a data set is that name.

    Class attributes:

    - ``label``: the task's *label kind*, a ``LabelKind`` instance (``tasks.labels``: ``INDEX_MAP``,
      ``SCALAR_MAP``, ``VECTOR_MAP``, ``CLASS``, ``MULTI_LABEL``, or a kind of your own): what the
      data carries. The data transforms resize, flip and collate a label by its kind, and partial
      labels blank it with the kind's "no label here" value. A data set may hold its own instance
      for a label (``label_kinds``); an unregistered task names it in ``task_args: {name: {label: ...}}``.
    - ``head_kind``: the *head kind*, ``"dense"`` (the head sees a map) or ``"cls"`` (pooled
      features): what the network feeds the head, read from the label kind's ``spatial`` unless a
      task sets it. The head adapter lays token features out as a map for ``dense`` heads and pools
      them for ``cls`` (``nets.head_kind`` says the same for a task the registry doesn't know).
    - ``metrics``: metric name -> True when higher is better (Delta-m and the report read it).
    - ``primary``: the one metric that stands for the task when Delta-m uses one per task (the
      survey of Vandenhende et al.: mIoU, mean angle error, RMSE, accuracy, MAE).

    Constructor: ``Task(out_channels, loss_weight=1.0, **own)``; the recipe's ``task_args`` give
    the task's own arguments.

    Methods:

    - ``head(in_channels)``: a module called as ``head(features, size)`` with channels-first
      features and the input image's (H, W); it returns the prediction at that size (dense) or
      (B, out_channels) (``cls``).
    - ``loss(pred, target)``: a scalar tensor (without ``loss_weight``, which training applies),
      averaged over the labelled pixels or images only; finite, and with zero gradient, when the
      batch labels none.
    - ``labelled(target)``: a (B,) bool tensor, True for the images that carry this task's label
      (partial labels: an unlabelled image holds its kind's ``unlabelled_like`` value). The default
      reads the label kind's ignore value; training gives a task no loss in a step whose batch
      labels no image for it.
    - ``reset()``, ``update(pred, target)`` per batch, ``compute()``: the metrics over the whole
      evaluation set, pooled (not batch means), as ``{name: value}`` with the names of ``metrics``;
      unlabelled pixels and images count nowhere.
    """

    task_name = "task"  # set by ``register_task``
    label: LabelKind = INDEX_MAP
    metrics: dict[str, bool] = {}
    primary: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:  # renamed: a plugin's override would otherwise be ignored silently
            raise TypeError(f"task class {cls.__name__}: Task.kind is now Task.head_kind ('dense' or 'cls')")

    def __init__(self, out_channels: int, loss_weight: float = 1.0) -> None:
        if (
            isinstance(loss_weight, bool)
            or not isinstance(loss_weight, (int, float))
            or not 0 <= loss_weight < math.inf
        ):
            name = getattr(self, "task_name", type(self).__name__)
            raise PlanError(f"task {name!r}: loss_weight must be a number >= 0, got {loss_weight!r}")
        self.out_channels = int(out_channels)
        self.loss_weight = float(loss_weight)
        self.reset()

    @abstractmethod
    def head(self, in_channels: int) -> nn.Module:
        """The task's head (called as ``head(features, size)``)."""

    @abstractmethod
    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """The training loss on one batch."""

    @property
    def head_kind(self) -> str:
        """The head kind: ``dense`` when the label kind is spatial (the head sees a map), else ``cls``."""
        return "dense" if self.label.spatial else "cls"

    def labelled(self, target: Any) -> Tensor:
        """Which images of the batch carry this task's label ((B,) bool): the label kind says."""
        return self.label.labelled(target)

    @abstractmethod
    def reset(self) -> None:
        """Start a new evaluation."""

    @abstractmethod
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch to the evaluation."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """The metrics of everything added since ``reset``."""


def task_class(name: str, types: Mapping[str, str] | None = None) -> type[Task]:
    """The ``Task`` class behind a study's task ``name``: the registered task ``types[name]`` where
    the study declares one (a folder's ``tasks.yaml``, a recipe's ``task_args: {NAME: {task: TYPE}}``),
    else the registered task of that name."""
    typ = (types or {}).get(name, name)
    if typ not in TASKS and typ == name:
        raise PlanError(
            f"unknown task {name!r}; registered: {', '.join(sorted(TASKS))} (a task of another name says which"
            f" registered task it is: task_args: {{{name}: {{task: TYPE}}}}, or tasks.yaml in a folder data set)"
        )
    return TASKS.get(typ)


def task_arguments(args: Mapping[str, Any] | None) -> dict[str, Any]:
    """A recipe's ``task_args`` entry as constructor arguments: without ``task``, which names the
    registered type of a task whose name is not one (``task_class``)."""
    return {k: v for k, v in (args or {}).items() if k != "task"}


def label_kind(name: str, types: Mapping[str, str] | None = None) -> LabelKind:
    """The label kind of a study's task (a data item's key is the task's name)."""
    return task_class(name, types).label
