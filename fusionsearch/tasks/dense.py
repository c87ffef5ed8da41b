"""The built-in dense tasks, a prediction per pixel: ``seg``, ``normal`` and ``depth``, with the
heads that predict a map and resize it to the input (DeepLab's ASPP for ``seg``, a 1x1 conv for the
others).

Their metrics accumulate over a whole evaluation set (a confusion matrix for segmentation, exact
sums and a fine histogram for angles) instead of averaging per-batch values, which is how the
papers report them. Cut from the contract (``task``) so that it holds no particular task, and from
the per-image tasks, whose heads pool instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionsearch.errors import PlanError
from fusionsearch.tasks.labels import IndexMap
from fusionsearch.tasks.resize import resize_bilinear
from fusionsearch.tasks.task import SCALAR_MAP, VECTOR_MAP, Task, register_task

__all__ = ["ASPPHead", "Segmentation", "Normals", "Depth"]


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


@register_task("seg")
class Segmentation(Task):
    """Semantic segmentation: cross-entropy; mIoU and pixel accuracy over the evaluation set.

    Semantic segmentation: cross-entropy with an ignore index; mIoU and pixel accuracy from one
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
        self.label = IndexMap(ignore_index)
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

    def per_category(self) -> dict[str, float]:
        """Each class's IoU (%) from the same confusion matrix as ``compute``, keyed by the class
        index as a string; NaN for a class absent from both the labels and the predictions (the
        classes that ``miou`` leaves out). The data-starved analysis of the report reads it."""
        cm = self.confusion.double()
        tp = cm.diagonal()
        union = cm.sum(0) + cm.sum(1) - tp
        iou = torch.where(union > 0, 100 * tp / union.clamp_min(1), float("nan"))
        return {str(c): float(v) for c, v in enumerate(iou.tolist())}


_ANGLE_BINS = 18000  # 0.01 degree bins: the median is exact to 0.01 degrees


@register_task("normal")
class Normals(Task):
    """Surface normals: 1 - cos loss; angle errors in degrees (mean, median, % within).

    Surface normals: predictions normalised to unit length; loss = 1 - cos between the unit
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
    """Depth: L1 on valid pixels; abs_err, abs_rel and RMSE over the evaluation set.

    Depth: L1 on valid pixels (depth > 0). Metrics pooled over every valid pixel of the
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
