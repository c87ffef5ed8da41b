"""The tasks PASCAL-Context adds to ``seg`` and ``normal`` in the multi-task survey (Vandenhende et
al., TPAMI 2021; SimonVandenhende/Multi-Task-Learning-PyTorch): ``human_parts`` (a segmentation
into PASCAL-Part's person parts) and ``sal`` (saliency, a binary map).

``sal`` follows the survey's code: one logit per pixel trained with its balanced binary
cross-entropy (``losses/loss_functions.py`` ``BalancedCrossEntropyLoss``: the positives weighted
by the batch's share of negatives and vice versa, HED-style), and scored as
``evaluation/eval_sal.py`` ``SaliencyMeter`` does: at each of 15 thresholds
``linspace(0.2, 0.9, 15)`` on the sigmoid, each image's precision, recall and IoU; their means
over the images; ``maxf`` = the largest F-measure of the mean precision and mean recall over the
thresholds, ``miou`` = the largest mean IoU. The survey's code computes F1 (beta^2 = 1), not the
saliency literature's beta^2 = 0.3: ``beta2`` chooses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionsearch.errors import PlanError
from fusionsearch.tasks.dense import ASPPHead, Segmentation, _DenseHead
from fusionsearch.tasks.labels import IGNORE_INDEX, IndexMap
from fusionsearch.tasks.task import Task, register_task

__all__ = ["HumanParts", "Saliency", "SALIENCY_THRESHOLDS"]

SALIENCY_THRESHOLDS = torch.linspace(0.2, 0.9, 15, dtype=torch.float64)  # eval_sal.py's mask_thres
_EPS = 1e-12  # jaccard.py's precision_recall


@register_task("human_parts")
class HumanParts(Segmentation):
    """Human part segmentation (PASCAL-Context): as ``seg``, mIoU over 6 parts + background.

    Human part segmentation: ``seg``'s loss, head and pooled confusion-matrix mIoU over the
    survey's 7 classes (6 parts + background). An image without persons is all 255 and counts
    nowhere. The survey's ``HumanPartsMeter`` counts a class absent from labels and predictions
    as IoU 0 where this skips it: the same on the real val set, where all 7 occur."""

    def __init__(
        self,
        out_channels: int = 7,
        loss_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        rates: Sequence[int] = (1, 6, 12, 18),
    ) -> None:
        super().__init__(out_channels, loss_weight, ignore_index, rates)


@register_task("sal")
class Saliency(Task):
    """Saliency: one logit per pixel, balanced BCE; the survey's maxF and mIoU.

    Saliency: an (H, W) map of 1 salient / 0 not / 255 unlabelled, predicted as one logit per
    pixel; balanced BCE over the labelled pixels; the survey's ``maxf`` and ``miou`` (module
    docstring), each image's unlabelled pixels left out and an image without any left out."""

    label = IndexMap(IGNORE_INDEX)
    metrics = {"maxf": True, "miou": True}
    primary = "maxf"

    def __init__(
        self,
        out_channels: int = 1,
        loss_weight: float = 1.0,
        balanced: bool = True,
        beta2: float = 1.0,
        rates: Sequence[int] = (1, 6, 12, 18),
    ) -> None:
        if out_channels != 1:
            raise PlanError(f"task 'sal' predicts one logit per pixel, got out_channels {out_channels}")
        if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
            raise PlanError(f"task 'sal': rates must be a non-empty list of dilation rates >= 1, got {list(rates)!r}")
        if isinstance(beta2, bool) or not isinstance(beta2, (int, float)) or not 0 < beta2 < float("inf"):
            raise PlanError(f"task 'sal': beta2 must be a number > 0, got {beta2!r}")
        self.balanced = bool(balanced)
        self.beta2 = float(beta2)
        self.rates = tuple(rates)
        super().__init__(1, loss_weight)

    def head(self, in_channels: int) -> nn.Module:
        return _DenseHead(ASPPHead(in_channels, 1, self.rates))

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        logit = pred.float().reshape(target.shape)
        valid = target != IGNORE_INDEX
        y = (target == 1).float()
        per_pixel = F.binary_cross_entropy_with_logits(logit, y, reduction="none")
        n = valid.sum().clamp_min(1)
        if self.balanced:  # the survey's HED weighting: w = share of negatives among labelled pixels
            w = (valid & (target == 0)).sum() / n
            per_pixel = per_pixel * torch.where(y > 0, w, 1 - w)
        return torch.where(valid, per_pixel, 0.0).sum() / n

    def reset(self) -> None:
        t = len(SALIENCY_THRESHOLDS)
        self.sums = {k: torch.zeros(t, dtype=torch.float64) for k in ("prec", "rec", "iou")}
        self.images = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        prob = torch.sigmoid(pred.detach().double().reshape(target.shape)).flatten(1).cpu()
        target = target.detach().flatten(1).cpu()
        valid = target != IGNORE_INDEX
        keep = valid.any(1)  # an image without a labelled pixel counts nowhere
        prob, gt, valid = prob[keep], (target[keep] == 1) & valid[keep], valid[keep]
        for j, th in enumerate(SALIENCY_THRESHOLDS):
            p = (prob > th) & valid
            tp = (p & gt).sum(1).double()
            fp = (p & ~gt).sum(1).double()
            fn = (~p & gt).sum(1).double()
            union = tp + fp + fn
            self.sums["prec"][j] += (tp / (tp + fp + _EPS)).sum()
            self.sums["rec"][j] += (tp / (tp + fn + _EPS)).sum()
            self.sums["iou"][j] += torch.where(union > 0, tp / union.clamp_min(1), 1.0).sum()
        self.images += int(keep.sum())

    def compute(self) -> dict[str, float]:
        if self.images == 0:
            return {"maxf": 0.0, "miou": 0.0}
        prec, rec, iou = (self.sums[k] / self.images for k in ("prec", "rec", "iou"))
        f = (1 + self.beta2) * prec * rec / (self.beta2 * prec + rec + _EPS)
        return {"maxf": 100 * f.max().item(), "miou": 100 * iou.max().item()}
