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
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from fusionsearch.errors import PlanError
from fusionsearch.registry import Registry

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
]

TASKS: Registry[type[Task]] = Registry("task", PlanError, name_attr="task_name")


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make a task available to plans, recipes and the CLI by ``name``."""
    return TASKS.register(name)


def get_task(name: str, **kwargs: Any) -> Task:
    """A task instance by registered name; keyword arguments go to its constructor."""
    return TASKS.get(name)(**kwargs)


# What a task's label is, so that resizing and flipping act on the kind, never on the task's name
INDEX_MAP = "index_map"  # (H, W) int64 classes, 255 = ignore: resized nearest, flipped as it is
SCALAR_MAP = "scalar_map"  # (1, H, W) float, 0 = unlabelled: resized over labelled pixels
VECTOR_MAP = "vector_map"  # (C, H, W) unit vectors, zero = unlabelled, channel 0 the image's x axis:
#   resized over labelled pixels and renormalised; a left-right flip negates channel 0 (normals)
CLASS = "class"  # one value per image (a class index or a number), -1 = unlabelled: not resized, not flipped
LABEL_KINDS = (INDEX_MAP, SCALAR_MAP, VECTOR_MAP, CLASS)
UNLABELLED_CLASS = -1
_IGNORE_INDEX = 255


def unlabelled_like(kind: str, label: Tensor) -> Tensor:
    """``label`` with every value replaced by its kind's "no label here" value (255 for index maps,
    zeros for scalar and vector maps, -1 for per-image classes and numbers): how a data set says
    that an image carries no label for a task (``data.partial``), in the same form as a label."""
    if kind == INDEX_MAP:
        return torch.full_like(label, _IGNORE_INDEX)
    if kind in (SCALAR_MAP, VECTOR_MAP):
        return torch.zeros_like(label)
    if kind == CLASS:
        return torch.full_like(label, UNLABELLED_CLASS)
    raise PlanError(f"unknown label kind {kind!r}; kinds: {', '.join(LABEL_KINDS)}")


def _any_per_image(valid: Tensor) -> Tensor:
    return valid.reshape(valid.shape[0], -1).any(1) if valid.dim() > 1 else valid


class Task(ABC):
    """A task: its label kind, head, loss and whole-set metrics. This docstring is the contract;
    a new task is one subclass with ``@register_task("name")`` in one file, and its items' key
    in a data set is that name.

    Class attributes:

    - ``label``: one of ``LABEL_KINDS`` (``index_map``, ``scalar_map``, ``vector_map``,
      ``class``): the data transforms resize and flip a label by its kind.
    - ``kind``: ``dense`` (a per-pixel prediction) or ``cls`` (one per image): the head adapter
      lays token features out as a map for dense tasks and pools them for ``cls``.
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
    kind = "dense"
    label = INDEX_MAP
    metrics: dict[str, bool] = {}
    primary: str = ""

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

    def labelled(self, target: Tensor) -> Tensor:
        """Which images of the batch carry this task's label ((B,) bool)."""
        if self.label == INDEX_MAP:
            return _any_per_image(target != getattr(self, "ignore_index", _IGNORE_INDEX))
        if self.label == SCALAR_MAP:
            return _any_per_image(target > 0)
        if self.label == VECTOR_MAP:
            return _any_per_image(target.norm(dim=1) > 0.5)
        return target.reshape(-1) >= 0

    @abstractmethod
    def reset(self) -> None:
        """Start a new evaluation."""

    @abstractmethod
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch to the evaluation."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """The metrics of everything added since ``reset``."""


def label_kind(name: str) -> str:
    """The label kind of a registered task (a data item's key is the task's name)."""
    cls = TASKS.get(name)
    return cls.label
