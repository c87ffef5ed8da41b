"""The ``boxes`` label kind: a variable number of objects per image, for region tasks (detection,
per-box attributes).

One item's label is a dict of tensors, torchvision's target convention plus two fields::

    boxes      (n, 4) float32, xyxy in pixels of the item's image
    labels     (n,) int64 class indices 1..C (0 is the background, as torchvision's heads count)
    attrs      (n, A) float32, 1 present / 0 absent / -1 unlabelled (optional: per-box attributes)
    difficult  (n,) bool (optional: VOC's "difficult" objects, ignored by the metrics)
    labelled   () bool: False for an image that carries no label for the task

"No objects" and "not labelled" are different things: an image with zero boxes and ``labelled``
True is a labelled negative (every region proposed there is background); an unlabelled image
(partial labels) adds nothing to a loss or a metric. A batch keeps one dict per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fusionsearch.tasks.labels import LabelKind, register_label_kind

__all__ = ["Boxes", "BOXES", "empty_boxes", "make_boxes", "RegionOutput"]

BoxLabel = dict[str, Tensor]


def make_boxes(
    boxes: Any,
    labels: Any,
    attrs: Any = None,
    difficult: Any = None,
    labelled: bool = True,
    num_attrs: int = 0,
) -> BoxLabel:
    """One image's boxes label from array-likes (``boxes`` (n, 4) xyxy pixels, ``labels`` (n,) 1..C),
    with the optional fields in their dtypes; ``num_attrs`` gives ``attrs`` its width when n is 0."""
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    out = {"boxes": b, "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1)}
    if attrs is not None or num_attrs:
        a = torch.as_tensor(attrs if attrs is not None else [], dtype=torch.float32)
        out["attrs"] = a.reshape(len(b), -1 if len(b) else num_attrs)
    if difficult is not None:
        out["difficult"] = torch.as_tensor(difficult, dtype=torch.bool).reshape(-1)
    out["labelled"] = torch.tensor(bool(labelled))
    return out


def empty_boxes(num_attrs: int = 0, labelled: bool = True) -> BoxLabel:
    """An image with no objects: a labelled negative, or (``labelled=False``) no label at all."""
    return make_boxes(torch.zeros(0, 4), torch.zeros(0), num_attrs=num_attrs, labelled=labelled)


@register_label_kind("boxes")
class Boxes(LabelKind):
    """Objects as boxes (xyxy pixels) with class labels, per image.

    Objects as boxes (xyxy pixels) with class labels, optional per-box attributes and
    "difficult" flags; ``labelled`` False = no label. A resize scales the boxes, a flip mirrors
    them; a batch is a list of dicts (torchvision's targets)."""

    spatial = True

    def unlabelled_like(self, label: BoxLabel) -> BoxLabel:
        width = label["attrs"].shape[1] if "attrs" in label else 0
        out = empty_boxes(width, labelled=False)
        if "difficult" in label:
            out["difficult"] = torch.zeros(0, dtype=torch.bool)
        return out

    def labelled(self, batch: Sequence[BoxLabel]) -> Tensor:
        return torch.tensor([bool(t["labelled"]) for t in batch], dtype=torch.bool)

    def resize(self, label: BoxLabel, src: tuple[int, int], dst: tuple[int, int]) -> BoxLabel:
        scale = torch.tensor([dst[1] / src[1], dst[0] / src[0]] * 2, dtype=label["boxes"].dtype)
        return {**label, "boxes": label["boxes"] * scale}

    def flip(self, label: BoxLabel, width: int) -> BoxLabel:
        b = label["boxes"]
        return {**label, "boxes": torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)}

    def collate(self, labels: Sequence[BoxLabel]) -> list[BoxLabel]:
        return list(labels)


BOXES = Boxes()
"""Boxes with class labels per image (detection); see ``Boxes``."""


class RegionOutput:
    """What a region head (``det``, ``box_attr``) returns when the net runs: its input features
    (B, C, h, w), the image's (H, W) and the head itself, which the task's ``loss`` and ``update``
    run on the regions the targets give (torchvision's RPN and RoI heads take the targets in their
    forward pass; ``box_attr`` pools the ground-truth boxes); in eval mode a detector also puts its
    ``detections`` (torchvision's list of dicts) here. ``float()`` returns itself: training casts
    every prediction to float before its loss."""

    def __init__(self, features: Tensor, size: tuple[int, int], head: Any, detections: Any = None) -> None:
        self.features = features
        self.size = (int(size[0]), int(size[1]))
        self.head = head
        self.detections = detections

    def float(self) -> RegionOutput:
        return self

    def select(self, keep: Sequence[int]) -> RegionOutput:
        """The output of the images ``keep`` only."""
        dets = None if self.detections is None else [self.detections[i] for i in keep]
        return RegionOutput(self.features[list(keep)], self.size, self.head, dets)
