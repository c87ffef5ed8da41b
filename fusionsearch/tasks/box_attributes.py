"""``box_attr``: attributes of each object of an image (aPascal's 64 per-box attributes), the
attribute half of the cross-stitch paper's detection + attributes experiment (Misra et al. 2016,
Table 6), on the ``boxes`` label kind (its ``attrs``: 1 present, 0 absent, -1 unlabelled).

The head pools each region of the column's last feature map with torchvision's ``roi_align``
(``roi_size`` x ``roi_size``, sampling ratio 2, ``aligned=True``; the boxes are scaled to the map
per axis, so any stride is exact, where ``MultiScaleRoIAlign`` rounds it to a power of 2) and
predicts the attributes' logits with torchvision's ``TwoMLPHead`` (Fast R-CNN's fc6, fc7) and a
linear layer. The regions come from the targets, so the head returns a ``RegionOutput`` (the map,
the image size and the head), which the loss and the metrics pool on the boxes they need.

Training follows the paper, which trains attributes on Fast R-CNN's foreground RoIs only. A column
has no region proposals here, so the RoIs of an image are its ground-truth boxes and
``rois_per_box`` jittered copies of each (``jitter_boxes``: centre and size moved by up to
``jitter`` of the box's width and height, a draw from torch's global generator, which training
seeds per step, clipped to the image). An RoI carries the attributes of the ground-truth box it
overlaps most where that IoU is at least ``fg_iou`` (0.5, Fast R-CNN's foreground threshold:
``match_attributes``); the others are background and add nothing to the loss, as in the paper.
The loss is ``attr``'s: binary cross-entropy with logits, the mean over the labelled entries of
the foreground RoIs (optional per-attribute ``pos_weight``). The paper scales this loss by 1/64
against detection's: that is the recipe's ``loss_weight`` (``task_args: {box_attr: {loss_weight:
0.015625}}``), not a constant here.

Evaluation follows aPascal's protocol: attributes are predicted on the ground-truth boxes (every
box, "difficult" or not: it names a hard detection, not a hard attribute), their probabilities
pooled over the evaluation set; ``map`` is the mean over attributes with a labelled positive of
each one's average precision, ``mean_acc`` the mean per-attribute accuracy at 0.5 (%), computed
exactly as ``attr`` computes them (``tasks.attributes``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import box_iou, clip_boxes_to_image, roi_align

from fusionsearch.errors import DataError, PlanError
from fusionsearch.tasks.attributes import _pos_weight, attribute_loss, attribute_metrics, per_attribute
from fusionsearch.tasks.boxes import BOXES, BoxLabel, RegionOutput
from fusionsearch.tasks.labels import LabelKind
from fusionsearch.tasks.task import Task, register_task

__all__ = ["BoxAttrHead", "BoxAttributes", "jitter_boxes", "match_attributes"]


def jitter_boxes(
    boxes: Tensor, size: tuple[int, int], copies: int, jitter: float, generator: torch.Generator | None = None
) -> Tensor:
    """The boxes (n, 4) followed by ``copies`` jittered copies of each ((n x (1 + copies), 4), the
    copies in blocks of n): each copy's centre moved and its width and height scaled by uniform draws
    within +-``jitter`` of the box's width and height, then clipped to the (H, W) image. The draws
    come from ``generator`` (torch's global one by default), on the CPU whatever the boxes' device,
    so a seed gives the same RoIs on every device."""
    n = len(boxes)
    if not copies or not n:
        return boxes
    u = (torch.rand(copies, n, 4, generator=generator) * 2 - 1).to(boxes.device, boxes.dtype)
    wh = boxes[:, 2:] - boxes[:, :2]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + jitter * wh * u[..., :2]
    half = wh * (1 + jitter * u[..., 2:]) / 2
    moved = clip_boxes_to_image(torch.cat([centre - half, centre + half], -1).reshape(-1, 4), size)
    return torch.cat([boxes, moved])


def match_attributes(rois: Tensor, boxes: Tensor, attrs: Tensor, fg_iou: float = 0.5) -> Tensor:
    """Each RoI's attribute targets ((N, A), 1/0/-1): those of the ground-truth box it overlaps most
    (torchvision's ``box_iou``) where that IoU is at least ``fg_iou`` (a foreground RoI); all -1 for
    a background RoI, which no loss then counts. A degenerate box overlaps nothing."""
    if not len(boxes):
        return attrs.new_full((len(rois), attrs.shape[-1]), -1.0)
    best, which = box_iou(rois, boxes).nan_to_num(0.0).max(1)
    return torch.where((best >= fg_iou)[:, None], attrs[which].float(), -1.0)


class BoxAttrHead(nn.Module):
    """A channels-first map -> a ``RegionOutput``; ``predict`` pools boxes of it (``roi_align``) and
    returns their attribute logits (``TwoMLPHead`` and a linear layer)."""

    def __init__(self, in_channels: int, out: int, roi_size: int = 7, hidden: int = 1024) -> None:
        super().__init__()
        self.roi_size = roi_size
        self.box_head = TwoMLPHead(in_channels * roi_size**2, hidden)
        self.attrs = nn.Linear(hidden, out)

    def forward(self, x: Tensor, size: tuple[int, int]) -> RegionOutput:
        return RegionOutput(x, (int(size[0]), int(size[1])), self)

    def predict(self, features: Tensor, boxes: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        """Attribute logits ((sum of n, A), in the order of the images' boxes) of ``boxes[i]`` (xyxy
        pixels of the (H, W) input) on image i of ``features`` (B, C, h, w)."""
        h, w = features.shape[-2:]
        scale = torch.tensor([w / size[1], h / size[0]] * 2, device=features.device)
        scaled = [b.to(features.device, torch.float32) * scale for b in boxes]
        r = self.roi_size
        pooled = roi_align(features.float(), scaled, (r, r), spatial_scale=1.0, sampling_ratio=2, aligned=True)
        return self.attrs(self.box_head(pooled))


@register_task("box_attr")
class BoxAttributes(Task):
    """Per-box attributes (aPascal's protocol): BCE on foreground RoIs; mAP and mean accuracy.

    Per-box attributes: BCE on foreground RoIs (ground-truth boxes and their jittered copies at
    IoU >= ``fg_iou``), background RoIs ignored; mAP over attributes and mean accuracy on the
    ground-truth boxes (aPascal's protocol)."""

    label: LabelKind = BOXES
    metrics = {"map": True, "mean_acc": True}
    primary = "map"

    def __init__(
        self,
        out_channels: int = 64,
        loss_weight: float = 1.0,
        rois_per_box: int = 4,
        jitter: float = 0.15,
        fg_iou: float = 0.5,
        roi_size: int = 7,
        pos_weight: float | Sequence[float] | None = None,
        hidden: int = 1024,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(out_channels, loss_weight)
        checks = {
            "rois_per_box": (rois_per_box, _is_int(rois_per_box, 0), "a whole number >= 0"),
            "jitter": (jitter, _is_number(jitter) and 0 <= jitter < 1, "a number in [0, 1)"),
            "fg_iou": (fg_iou, _is_number(fg_iou) and 0 < fg_iou <= 1, "a number in (0, 1]"),
            "roi_size": (roi_size, _is_int(roi_size, 1), "a whole number >= 1"),
            "hidden": (hidden, _is_int(hidden, 1), "a whole number >= 1"),
        }
        for key, (value, ok, what) in checks.items():
            if not ok:
                raise PlanError(f"task 'box_attr': {key} must be {what}, got {value!r}")
        if names is not None and (isinstance(names, str) or len(names) != self.out_channels):
            raise PlanError(f"task 'box_attr': names must name each of the {self.out_channels} attributes")
        self.rois_per_box, self.jitter, self.fg_iou = int(rois_per_box), float(jitter), float(fg_iou)
        self.roi_size, self.hidden = int(roi_size), int(hidden)
        self.pos_weight = None if pos_weight is None else _pos_weight(pos_weight, self.out_channels, "box_attr")
        self.names = None if names is None else [str(n) for n in names]

    def head(self, in_channels: int) -> nn.Module:
        return BoxAttrHead(in_channels, self.out_channels, self.roi_size, self.hidden)

    def _has_attributes(self, target: BoxLabel) -> bool:
        """Whether an image's label counts: labelled, with boxes and their attributes."""
        if not bool(target["labelled"]) or "attrs" not in target or not len(target["boxes"]):
            return False
        if target["attrs"].shape != (len(target["boxes"]), self.out_channels):
            raise DataError(
                f"task 'box_attr' predicts {self.out_channels} attributes per box, but a label's attrs are"
                f" {tuple(target['attrs'].shape)} for {len(target['boxes'])} boxes (out_channels: the data's A)"
            )
        return True

    def regions(self, target: Sequence[BoxLabel], size: tuple[int, int]) -> tuple[list[Tensor], Tensor]:
        """The training RoIs of each image (``jitter_boxes``; none for an image without attributes)
        and their attribute targets ((N, A), all -1 for background RoIs: ``match_attributes``)."""
        rois: list[Tensor] = []
        labels: list[Tensor] = []
        for t in target:
            if not self._has_attributes(t):
                rois.append(t["boxes"].new_zeros(0, 4))
                continue
            r = jitter_boxes(t["boxes"].float(), size, self.rois_per_box, self.jitter)
            rois.append(r)
            labels.append(match_attributes(r, t["boxes"].float(), t["attrs"], self.fg_iou))
        empty = torch.zeros(0, self.out_channels, device=rois[0].device if rois else None)
        return rois, torch.cat(labels) if labels else empty

    def loss(self, pred: Any, target: Any) -> Tensor:
        """BCE over the labelled attributes of the foreground RoIs (their mean); 0 with a graph
        and zero gradient when the batch has none (no image labelled, no boxes, no attrs)."""
        rois, targets = self.regions(target, pred.size)
        return attribute_loss(pred.head.predict(pred.features, rois, pred.size), targets, self.pos_weight)

    def reset(self) -> None:
        self.scores: list[Tensor] = []
        self.targets: list[Tensor] = []

    def update(self, pred: Any, target: Any) -> None:
        """Scores the ground-truth boxes of the images that carry attributes (aPascal's protocol)."""
        keep = [self._has_attributes(t) for t in target]
        if not any(keep):
            return
        boxes = [t["boxes"] if k else t["boxes"].new_zeros(0, 4) for t, k in zip(target, keep)]
        with torch.no_grad():
            logits = pred.head.predict(pred.features, boxes, pred.size)
        self.scores.append(logits.detach().float().sigmoid().cpu())
        self.targets.append(torch.cat([t["attrs"] for t, k in zip(target, keep) if k]).cpu().to(torch.int8))

    def per_attribute(self) -> dict[str, Tensor]:
        """Per attribute over the boxes added since ``reset``: ``ap`` (NaN without a labelled
        positive), ``accuracy`` at 0.5 (NaN without a labelled entry), ``positives`` (counts)."""
        return per_attribute(self.scores, self.targets, self.out_channels)

    def per_category(self) -> dict[str, float]:
        """Each attribute's AP (%; NaN without a labelled positive), by name or index."""
        ap = self.per_attribute()["ap"]
        keys = self.names or [str(a) for a in range(self.out_channels)]
        return {k: 100 * float(v) for k, v in zip(keys, ap)}

    def compute(self) -> dict[str, float]:
        return attribute_metrics(self.per_attribute())


def _is_int(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
