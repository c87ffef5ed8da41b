"""Tasks: what each task predicts, its head, its loss, and its metrics with their directions.

A task is one class plus one ``@register_task`` line. Metrics accumulate over a whole evaluation
set (a confusion matrix for segmentation, exact sums and a fine histogram for angles) instead of
averaging per-batch values, which is how the papers report them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionsearch.errors import PlanError
from fusionsearch.registry import Registry
from fusionsearch.tasks.resize import resize_bilinear

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


class ASPPHead(nn.Module):
    """DeepLab-style head: parallel atrous 3x3 convs (and a 1x1) summed, as in DeepLab-v2's ASPP,
    each branch predicting the classes; the sum is upsampled to the input size by the caller."""

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int] = (1, 6, 12, 18)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, 1 if r == 1 else 3, padding=0 if r == 1 else r, dilation=r)
            for r in rates
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for b in self.branches[1:]:
            out = out + b(x)
        return out


class _DenseHead(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return resize_bilinear(self.body(x), size=size)


class _ClsHead(nn.Module):
    def __init__(self, in_channels: int, out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, out)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        return self.fc(x.flatten(2).mean(-1) if x.dim() > 2 else x)


@register_task("seg")
class Segmentation(Task):
    """Semantic segmentation: cross-entropy with an ignore index; mIoU and pixel accuracy from one
    confusion matrix over the whole evaluation set (classes absent from both sides don't count)."""

    metrics = {"miou": True, "pixel_acc": True}
    primary = "miou"

    def __init__(
        self,
        out_channels: int = 40,
        loss_weight: float = 1.0,
        ignore_index: int = 255,
        rates: Sequence[int] = (1, 6, 12, 18),
    ) -> None:
        if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
            raise PlanError(f"task 'seg': rates must be a non-empty list of dilation rates >= 1, got {list(rates)!r}")
        self.ignore_index = ignore_index
        self.rates = tuple(rates)
        super().__init__(out_channels, loss_weight)

    def head(self, in_channels: int) -> nn.Module:
        return _DenseHead(ASPPHead(in_channels, self.out_channels, self.rates))

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        # a sum over labelled pixels / their count: an all-ignored batch gives 0, not NaN (the
        # mean of ``cross_entropy`` divides by zero there), and nothing waits on the device
        target = target.long()
        total = F.cross_entropy(pred.float(), target, ignore_index=self.ignore_index, reduction="sum")
        return total / (target != self.ignore_index).sum().clamp_min(1)

    def reset(self) -> None:
        self.confusion = torch.zeros(self.out_channels, self.out_channels, dtype=torch.long)

    def update(self, pred: Tensor, target: Tensor) -> None:
        label = pred.argmax(1).flatten().cpu()
        target = target.flatten().cpu().long()
        keep = (target != self.ignore_index) & (target >= 0) & (target < self.out_channels)
        n = self.out_channels
        self.confusion += torch.bincount(target[keep] * n + label[keep], minlength=n * n).view(n, n)

    def compute(self) -> dict[str, float]:
        cm = self.confusion.double()
        tp = cm.diagonal()
        union = cm.sum(0) + cm.sum(1) - tp
        present = union > 0
        miou = (tp[present] / union[present]).mean().item() if present.any() else 0.0
        acc = (tp.sum() / cm.sum()).item() if cm.sum() > 0 else 0.0
        return {"miou": 100 * miou, "pixel_acc": 100 * acc}


_ANGLE_BINS = 18000  # 0.01 degree bins: the median is exact to 0.01 degrees


@register_task("normal")
class Normals(Task):
    """Surface normals: predictions normalised to unit length; loss = 1 - cos between the unit
    prediction and the unit label, averaged over valid pixels (the official NDDR code's
    ``tf.losses.cosine_distance``, the PyTorch port's and LibMTL's); metrics in degrees over all
    valid pixels of the evaluation set, pooled: mean, median, % within 11.25 / 22.5 / 30 (<=).

    ``score_space`` says where angles are measured. ``unit`` (default): between unit normals, as
    LibMTL and mtan do (they decode the label to n in [-1, 1]). ``png``: as both NDDR codes do,
    between the L2-normalised *encoded* vectors: the label as its PNG stores it, round((n + 1) x
    127.5) in 0..255, and the prediction mapped the same way, (n_hat + 1) x 127.5. Those vectors
    all lie in one octant, so the same predictions score far smaller angles there (about half):
    the NDDR papers' 13.9-15.6 degrees are on that scale, and the NDDR recipes score with it.
    """

    label = VECTOR_MAP

    metrics = {"mean": False, "median": False, "within_11.25": True, "within_22.5": True, "within_30": True}
    primary = "mean"

    def __init__(self, out_channels: int = 3, loss_weight: float = 1.0, score_space: str = "unit") -> None:
        if out_channels != 3:
            raise PlanError(f"normal predicts 3 channels, got {out_channels}")
        if score_space not in ("unit", "png"):
            raise PlanError(f"normal score_space must be 'unit' or 'png', got {score_space!r}")
        super().__init__(out_channels, loss_weight)
        self.score_space = score_space

    def head(self, in_channels: int) -> nn.Module:
        return _DenseHead(nn.Conv2d(in_channels, 3, 1))

    @staticmethod
    def _valid(target: Tensor) -> Tensor:
        return target.norm(dim=1) > 0.5  # unlabelled pixels are stored as zero vectors

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        valid = self._valid(target)
        p = F.normalize(pred.float(), dim=1)
        t = F.normalize(target.float(), dim=1)
        err = torch.where(valid, 1 - (p * t).sum(1), 0.0)
        return err.sum() / valid.sum().clamp_min(1)

    def reset(self) -> None:
        self.hist = torch.zeros(_ANGLE_BINS, dtype=torch.long)
        self.sum = 0.0
        self.count = 0
        self.within = {11.25: 0, 22.5: 0, 30.0: 0}

    def update(self, pred: Tensor, target: Tensor) -> None:
        valid = self._valid(target)
        p, t = F.normalize(pred.float(), dim=1), F.normalize(target.float(), dim=1)
        if self.score_space == "png":  # the NDDR codes' space: encoded 0..255 vectors
            p, t = (p + 1) * 127.5, torch.round((t + 1) * 127.5)
        cos = (F.normalize(p, dim=1) * F.normalize(t, dim=1)).sum(1)
        ang = torch.rad2deg(torch.acos(cos[valid].clamp(-1, 1))).double().cpu()
        self.sum += ang.sum().item()
        self.count += ang.numel()
        for th in self.within:
            self.within[th] += int((ang <= th).sum())
        idx = (ang / 180 * _ANGLE_BINS).long().clamp(max=_ANGLE_BINS - 1)
        self.hist += torch.bincount(idx, minlength=_ANGLE_BINS)

    def compute(self) -> dict[str, float]:
        n = max(self.count, 1)
        cum = self.hist.cumsum(0)
        median_bin = int(torch.searchsorted(cum, torch.tensor((self.count + 1) // 2)))
        return {
            "mean": self.sum / n,
            "median": (median_bin + 0.5) * 180 / _ANGLE_BINS,
            "within_11.25": 100 * self.within[11.25] / n,
            "within_22.5": 100 * self.within[22.5] / n,
            "within_30": 100 * self.within[30.0] / n,
        }


@register_task("depth")
class Depth(Task):
    """Depth: L1 on valid pixels (depth > 0). Metrics pooled over every valid pixel of the
    evaluation set: ``abs_err`` (mean |d_hat - d|, LibMTL's and mtan's "abs err"), ``abs_rel``
    (mean |d_hat - d| / d, their "rel err") and RMSE."""

    label = SCALAR_MAP

    metrics = {"abs_err": False, "abs_rel": False, "rmse": False}
    primary = "rmse"

    def __init__(self, out_channels: int = 1, loss_weight: float = 1.0) -> None:
        super().__init__(1, loss_weight)

    def head(self, in_channels: int) -> nn.Module:
        return _DenseHead(nn.Conv2d(in_channels, 1, 1))

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        target = target.reshape(pred.shape)
        valid = target > 0
        err = torch.where(valid, (pred.float() - target.float()).abs(), 0.0)
        return err.sum() / valid.sum().clamp_min(1)

    def reset(self) -> None:
        self.abs_err = 0.0
        self.abs_rel = 0.0
        self.sq = 0.0
        self.count = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        target = target.reshape(pred.shape).double()
        valid = target > 0
        p, t = pred.double()[valid], target[valid]
        self.abs_err += (p - t).abs().sum().item()
        self.abs_rel += ((p - t).abs() / t).sum().item()
        self.sq += (p - t).pow(2).sum().item()
        self.count += t.numel()

    def compute(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {"abs_err": self.abs_err / n, "abs_rel": self.abs_rel / n, "rmse": math.sqrt(self.sq / n)}


@register_task("cls")
class Classification(Task):
    """Image classification: cross-entropy; accuracy (%)."""

    kind = "cls"
    label = CLASS
    metrics = {"accuracy": True}
    primary = "accuracy"

    def head(self, in_channels: int) -> nn.Module:
        return _ClsHead(in_channels, self.out_channels)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        target = target.long().reshape(-1)
        total = F.cross_entropy(pred.float(), target, ignore_index=UNLABELLED_CLASS, reduction="sum")
        return total / (target != UNLABELLED_CLASS).sum().clamp_min(1)

    def reset(self) -> None:
        self.correct = 0
        self.count = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        target = target.cpu().long().reshape(-1)
        keep = target != UNLABELLED_CLASS
        self.correct += int((pred.argmax(1).cpu()[keep] == target[keep]).sum())
        self.count += int(keep.sum())

    def compute(self) -> dict[str, float]:
        return {"accuracy": 100 * self.correct / max(self.count, 1)}


@register_task("gender")
class Gender(Classification):
    """Gender (NDDR-CNN Sec. 5.2): 2-way classification, accuracy."""

    def __init__(self, out_channels: int = 2, loss_weight: float = 1.0) -> None:
        super().__init__(out_channels, loss_weight)


@register_task("age")
class Age(Task):
    """Age (NDDR-CNN Sec. 5.2, after DEX): a 100-way softmax over ages 0..99 trained with
    cross-entropy; the estimate is the expected age sum_k p_k k; mean and median absolute error."""

    kind = "cls"
    label = CLASS
    metrics = {"mae": False, "median_ae": False}
    primary = "mae"

    def __init__(self, out_channels: int = 100, loss_weight: float = 1.0) -> None:
        super().__init__(out_channels, loss_weight)

    def head(self, in_channels: int) -> nn.Module:
        return _ClsHead(in_channels, self.out_channels)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        target = target.long().reshape(-1)
        keep = target != UNLABELLED_CLASS
        per_image = F.cross_entropy(pred.float(), target.clamp(0, self.out_channels - 1), reduction="none")
        return torch.where(keep, per_image, 0.0).sum() / keep.sum().clamp_min(1)

    def estimate(self, pred: Tensor) -> Tensor:
        ages = torch.arange(self.out_channels, device=pred.device, dtype=torch.float32)
        return (pred.float().softmax(1) * ages).sum(1)

    def reset(self) -> None:
        self.errors: list[Tensor] = []

    def update(self, pred: Tensor, target: Tensor) -> None:
        target = target.reshape(-1)
        keep = target != UNLABELLED_CLASS
        self.errors.append((self.estimate(pred)[keep] - target[keep].float()).abs().cpu())

    def compute(self) -> dict[str, float]:
        err = torch.cat(self.errors) if self.errors else torch.zeros(1)
        return {"mae": err.mean().item(), "median_ae": err.median().item()}


@dataclass(frozen=True)
class DeltaM:
    """How Delta-m, the multi-task gain in % over the single-task networks, averages its terms.

    Each term is (-1)^lower_is_better (M_mt - M_st) / M_st * 100 for one metric of one task.

    - ``average="tasks"`` (default): the mean of each task's terms, then the mean over tasks, so
      each task counts once however many metrics it reports (LibMTL's Delta_p,
      ``count_improvement``). ``"metrics"``: the flat mean over every term (Maninis et al.,
      Nash-MTL), where surface normals' five metrics outweigh segmentation's two.
    - ``metrics="all"`` (default): every metric the task reports. ``"primary"``: only each task's
      ``Task.primary`` metric (the survey of Vandenhende et al.); then both averages agree.
    """

    average: str = "tasks"
    metrics: str = "all"

    def __post_init__(self) -> None:
        if self.average not in ("tasks", "metrics"):
            raise PlanError(f"delta_m average must be 'tasks' or 'metrics', got {self.average!r}")
        if self.metrics not in ("all", "primary"):
            raise PlanError(f"delta_m metrics must be 'all' or 'primary', got {self.metrics!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> DeltaM:
        d = dict(d or {})
        unknown = set(d) - {"average", "metrics"}
        if unknown:
            raise PlanError(f"unknown delta_m field(s) {sorted(unknown)}; known: average, metrics")
        return cls(**d)

    def describe(self) -> str:
        """One line for reports and tables: which convention produced the numbers."""
        what = "each task's primary metric" if self.metrics == "primary" else "all metrics"
        if self.metrics == "primary" or self.average == "tasks":
            how = "mean over tasks" + ("" if self.metrics == "primary" else " of each task's mean")
            src = "Vandenhende et al." if self.metrics == "primary" else "LibMTL's Delta_p"
        else:
            how, src = "flat mean over metrics", "Maninis et al. / Nash-MTL"
        return f"Delta-m (%): {how} relative gain over single-task, {what} ({src})"

    def __call__(
        self,
        multi: Mapping[str, Mapping[str, float]],
        single: Mapping[str, Mapping[str, float]],
        directions: Mapping[str, Mapping[str, bool]],
        skip_zero: bool = False,
    ) -> float:
        return delta_m(multi, single, directions, skip_zero, average=self.average, metrics=self.metrics)


def primary_metric(task: str) -> str:
    """The metric that stands for ``task`` when Delta-m uses one per task."""
    cls = TASKS.get(task.split(":")[0])
    if not cls.primary:
        raise PlanError(f"task {task!r} declares no primary metric (Task.primary): use delta_m metrics: all")
    return cls.primary


def delta_m(
    multi: Mapping[str, Mapping[str, float]],
    single: Mapping[str, Mapping[str, float]],
    directions: Mapping[str, Mapping[str, bool]],
    skip_zero: bool = False,
    *,
    average: str = "tasks",
    metrics: str = "all",
) -> float:
    """Multi-task gain in %: (-1)^lower_is_better (M_mt - M_st) / M_st averaged as ``DeltaM`` says
    (by default within each task, then over tasks: LibMTL's Delta_p).

    ``directions[task][metric]`` is True when higher is better (``Task.metrics``). A single-task
    value of 0 makes its term undefined: an error, or with ``skip_zero`` the term is left out (a
    search on a tiny budget can have 0% of pixels within 11.25 degrees).
    """
    DeltaM(average, metrics)  # validates
    per_task: list[list[float]] = []
    for task, dirs in directions.items():
        names = [primary_metric(task)] if metrics == "primary" else list(dirs)
        terms = []
        for metric in names:
            base = single[task][metric]
            if base == 0:
                if skip_zero:
                    continue
                raise ValueError(f"single-task {task}/{metric} is 0: Delta-m is undefined")
            sign = 1.0 if dirs[metric] else -1.0
            terms.append(sign * (multi[task][metric] - base) / abs(base) * 100)
        if terms:
            per_task.append(terms)
    if not per_task:
        raise ValueError("no metrics to compare")
    if average == "tasks":
        return sum(sum(t) / len(t) for t in per_task) / len(per_task)
    flat = [x for t in per_task for x in t]
    return sum(flat) / len(flat)
