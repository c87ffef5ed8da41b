"""``attr``: multi-label attributes of an image (CelebA's 40 face attributes, a user's tags), each
one present, absent or unlabelled (the ``multi_label`` kind: 1, 0, -1).

The loss is binary cross-entropy with logits over the labelled (image, attribute) entries only;
the metrics are the mean over attributes of the average precision (torchmetrics' exact binary AP
of each attribute, unlabelled entries ignored; NaN and left out of the mean for an attribute
without a labelled positive) and the mean per-attribute accuracy at a
probability of 0.5, the two numbers the attribute literature reports (aPascal's and CelebA's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionsearch.errors import PlanError
from fusionsearch.tasks.per_image import ClsHead
from fusionsearch.tasks.task import MULTI_LABEL, UNLABELLED_CLASS, Task, register_task

__all__ = ["Attributes", "attribute_ap", "attribute_loss", "attribute_metrics", "per_attribute"]


def attribute_ap(scores: Tensor, target: Tensor) -> Tensor:
    """Average precision per attribute ((A,) float64, NaN where an attribute has no labelled
    positive, all of its entries -1 included): torchmetrics' exact binary AP of each attribute that
    has one (every score a threshold, VOC-style all-point precision, what its multilabel AP computes
    per label), with the -1 entries ignored."""
    from torchmetrics.functional.classification import binary_average_precision

    ap = torch.full((target.shape[1],), float("nan"), dtype=torch.float64)
    for a in (target == 1).any(0).nonzero().flatten().tolist():  # no positive: torchmetrics fails or warns
        ap[a] = float(
            binary_average_precision(scores[:, a].float(), target[:, a].long(), ignore_index=UNLABELLED_CLASS)
        )
    return ap


def attribute_loss(pred: Tensor, target: Tensor, pos_weight: Tensor | None = None) -> Tensor:
    """Binary cross-entropy with logits over the labelled (>= 0) entries of ``target`` (the shape
    of ``pred``), their mean; 0 (with a graph, zero gradient) when none is labelled."""
    target = target.float()
    keep = target >= 0
    weight = None if pos_weight is None else pos_weight.to(pred.device)
    per_entry = F.binary_cross_entropy_with_logits(
        pred.float(), target.clamp_min(0), pos_weight=weight, reduction="none"
    )
    return torch.where(keep, per_entry, 0.0).sum() / keep.sum().clamp_min(1)


def per_attribute(scores: Sequence[Tensor], targets: Sequence[Tensor], num_attrs: int) -> dict[str, Tensor]:
    """Per attribute over batches of (N, A) probabilities and 1/0/-1 targets: ``ap`` (NaN without
    a labelled positive), ``accuracy`` at 0.5 (NaN without a labelled entry), ``positives``."""
    if not scores:
        nan = torch.full((num_attrs,), float("nan"), dtype=torch.float64)
        return {"ap": nan, "accuracy": nan, "positives": torch.zeros(num_attrs, dtype=torch.long)}
    score, target = torch.cat(list(scores)), torch.cat(list(targets)).long()
    keep = target >= 0
    right = ((score >= 0.5).long() == target) & keep
    labelled = keep.sum(0)
    accuracy = torch.where(labelled > 0, right.sum(0).double() / labelled.clamp_min(1), float("nan"))
    return {"ap": attribute_ap(score, target), "accuracy": accuracy, "positives": (target == 1).sum(0)}


def attribute_metrics(per: dict[str, Tensor]) -> dict[str, float]:
    """``map`` and ``mean_acc`` (%) from ``per_attribute``: means over the attributes that have them."""
    ap, acc = per["ap"], per["accuracy"]
    return {
        "map": 100 * ap[~ap.isnan()].mean().item() if (~ap.isnan()).any() else 0.0,
        "mean_acc": 100 * acc[~acc.isnan()].mean().item() if (~acc.isnan()).any() else 0.0,
    }


@register_task("attr")
class Attributes(Task):
    """Multi-label attributes: BCE with logits; mAP and mean accuracy (%).

    Multi-label attributes: BCE with logits over labelled attributes (optional per-attribute
    ``pos_weight``); mAP over attributes with positives and mean accuracy at 0.5 (%)."""

    label = MULTI_LABEL
    metrics = {"map": True, "mean_acc": True}
    primary = "map"

    def __init__(
        self, out_channels: int = 40, loss_weight: float = 1.0, pos_weight: float | Sequence[float] | None = None
    ) -> None:
        super().__init__(out_channels, loss_weight)
        self.pos_weight = None if pos_weight is None else _pos_weight(pos_weight, self.out_channels)

    def head(self, in_channels: int) -> nn.Module:
        return ClsHead(in_channels, self.out_channels)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return attribute_loss(pred, target.reshape(pred.shape), self.pos_weight)

    def reset(self) -> None:
        self.scores: list[Tensor] = []
        self.targets: list[Tensor] = []

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.scores.append(pred.detach().float().sigmoid().cpu())
        self.targets.append(target.detach().reshape(pred.shape).cpu().to(torch.int8))

    def per_attribute(self) -> dict[str, Tensor]:
        """Per attribute over everything added since ``reset``: ``ap`` (NaN without a labelled
        positive), ``accuracy`` at 0.5 (NaN without a labelled entry) and ``positives`` (counts)."""
        return per_attribute(self.scores, self.targets, self.out_channels)

    def per_category(self) -> dict[str, float]:
        """Each attribute's AP (%) from ``per_attribute``, keyed by the attribute index as a string;
        NaN for an attribute without a labelled positive (left out of ``map`` too)."""
        return {str(a): 100 * float(v) for a, v in enumerate(self.per_attribute()["ap"].tolist())}

    def compute(self) -> dict[str, float]:
        return attribute_metrics(self.per_attribute())


def _pos_weight(value: float | Sequence[float], n: int, task: str = "attr") -> Tensor:
    values = [value] * n if isinstance(value, (int, float)) and not isinstance(value, bool) else list(value)  # type: ignore[arg-type]
    if len(values) != n or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf for v in values
    ):
        raise PlanError(f"task {task!r}: pos_weight must be a number > 0 or one per attribute ({n}), got {value!r}")
    return torch.tensor(values, dtype=torch.float32)
