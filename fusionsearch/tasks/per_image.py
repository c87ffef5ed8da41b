"""The built-in per-image tasks, one value per image: ``cls``, ``gender`` and ``age`` (NDDR-CNN's
IMDB-WIKI tasks), with the head that pools the features and predicts from the pooled vector.

Cut from the contract (``task``) so that it holds no particular task, and from the dense tasks,
whose heads predict maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionsearch.tasks.task import CLASS, UNLABELLED_CLASS, Task, register_task

__all__ = ["ClsHead", "Classification", "Gender", "Age"]


class ClsHead(nn.Module):
    """A linear layer on the features averaged over the image (or tokens): every per-image head."""

    def __init__(self, in_channels: int, out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, out)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        return self.fc(x.flatten(2).mean(-1) if x.dim() > 2 else x)


@register_task("cls")
class Classification(Task):
    """Image classification: cross-entropy; accuracy (%)."""

    label = CLASS
    metrics = {"accuracy": True}
    primary = "accuracy"

    def head(self, in_channels: int) -> nn.Module:
        return ClsHead(in_channels, self.out_channels)

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
    """Age (NDDR-CNN Sec. 5.2, after DEX): a 100-way softmax, the expected age; absolute errors.

    Age (NDDR-CNN Sec. 5.2, after DEX): a 100-way softmax over ages 0..99 trained with
    cross-entropy; the estimate is the expected age sum_k p_k k; mean and median absolute error."""

    label = CLASS
    metrics = {"mae": False, "median_ae": False}
    primary = "mae"

    def __init__(self, out_channels: int = 100, loss_weight: float = 1.0) -> None:
        super().__init__(out_channels, loss_weight)

    def head(self, in_channels: int) -> nn.Module:
        return ClsHead(in_channels, self.out_channels)

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
