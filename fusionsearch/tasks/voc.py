"""PASCAL VOC average precision of detections (``det``'s ``map``), as the VOC devkit computes it
(``VOCevaldet.m``; py-faster-rcnn's ``voc_eval.py`` is its Python port).

Hand-written because no maintained library computes it: torchmetrics' ``MeanAveragePrecision``
is COCO's metric (101-point interpolation, a detection that overlaps a taken ground truth falls
back to the next one, no "difficult" flag, and it needs pycocotools), so its AP@0.5 is close to,
but not, the number the VOC literature reports (the tests compare the two).

The rules, per class, over the whole evaluation set:

- the class's detections of every image are sorted by descending score; ties keep the order in
  which they were added (image by image, and within an image in the detector's order): a stable
  sort, as the devkit's MATLAB ``sort`` is;
- each detection is compared, by IoU, with every ground truth of its class in its image; the one
  of highest IoU decides (the devkit's rule, not COCO's: a detection whose best ground truth is
  taken is a false positive even if another one overlaps it enough). IoU >= ``iou`` (0.5) and that
  ground truth "difficult": the detection is ignored (neither true nor false positive); not yet
  matched: a true positive, and the ground truth is now taken; already taken: a false positive
  (a duplicate). Below ``iou`` (or no ground truth): a false positive;
- the positives are the class's ground truths that are not difficult; a class without any has
  no AP (NaN) and is left out of the mean;
- AP is the area under the precision envelope (precision made monotone from the right) over
  every recall step, VOC 2010 onwards ("all-point"); ``use_07`` gives VOC2007's 11-point metric,
  the mean of the envelope at recall 0, 0.1, ..., 1.

IoU is continuous (``torchvision.ops.box_iou``: area = (x2 - x1)(y2 - y1)), not the devkit's
integer-pixel convention (+1 on each side), which only suits boxes in whole pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["voc_ap", "VOCEvaluator"]


def voc_ap(recall: Any, precision: Any, use_07: bool = False) -> float:
    """Average precision (0..1) of a precision-recall curve given point by point in the order of
    descending score: the area under its monotone envelope (all-point), or with ``use_07`` the
    VOC2007 11-point metric (the envelope's mean at recall 0, 0.1, ..., 1)."""
    rec = torch.as_tensor(recall, dtype=torch.float64).reshape(-1)
    prec = torch.as_tensor(precision, dtype=torch.float64).reshape(-1)
    if use_07:
        points = [prec[rec >= t / 10].max().item() if bool((rec >= t / 10).any()) else 0.0 for t in range(11)]
        return sum(points) / 11
    mrec = torch.cat([rec.new_zeros(1), rec, rec.new_ones(1)])
    mpre = torch.cat([prec.new_zeros(1), prec, prec.new_zeros(1)])
    envelope = mpre.flip(0).cummax(0).values.flip(0)  # max precision at any recall to the right
    step = mrec[1:] != mrec[:-1]
    return float(((mrec[1:] - mrec[:-1]) * envelope[1:])[step].sum())


class VOCEvaluator:
    """VOC AP per class over everything ``add``-ed (the module's docstring has the rules).

    Args:
        num_classes: C; classes are 1..C (0 is the background, as torchvision's heads count).
        iou: the overlap a true positive needs (VOC: 0.5).
        use_07: VOC2007's 11-point AP instead of the all-point area.

    Examples:
        >>> ev = VOCEvaluator(2)
        >>> box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
        >>> ev.add([{"boxes": box, "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}],
        ...        [{"boxes": box, "labels": torch.tensor([1])}])
        >>> ev.per_class()[1], math.isnan(ev.per_class()[2]), ev.mean()
        (1.0, True, 1.0)
    """

    def __init__(self, num_classes: int, iou: float = 0.5, use_07: bool = False) -> None:
        self.num_classes = int(num_classes)
        self.iou = float(iou)
        self.use_07 = bool(use_07)
        self.reset()

    def reset(self) -> None:
        """Forget everything added."""
        self.images: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []

    def add(self, detections: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Tensor]]) -> None:
        """One batch: per image its detections (``boxes`` (n, 4) xyxy, ``labels`` (n,), ``scores``
        (n,)) and its ground truth (``boxes``, ``labels``, optional ``difficult``); an image whose
        target says ``labelled`` False counts nowhere."""
        if len(detections) != len(targets):
            raise ValueError(f"{len(detections)} images of detections but {len(targets)} of targets")
        for det, tgt in zip(detections, targets):
            if "labelled" in tgt and not bool(tgt["labelled"]):
                continue
            gt = {
                "boxes": tgt["boxes"].detach().cpu().double().reshape(-1, 4),
                "labels": tgt["labels"].detach().cpu().long().reshape(-1),
            }
            diff = tgt.get("difficult")
            gt["difficult"] = (
                diff.detach().cpu().bool().reshape(-1)
                if diff is not None
                else torch.zeros(len(gt["labels"]), dtype=torch.bool)
            )
            pred = {
                "boxes": det["boxes"].detach().cpu().double().reshape(-1, 4),
                "labels": det["labels"].detach().cpu().long().reshape(-1),
                "scores": det["scores"].detach().cpu().double().reshape(-1),
            }
            self.images.append((pred, gt))

    def per_class(self) -> dict[int, float]:
        """AP (0..1) of each class 1..C; NaN for a class without a ground truth that is not difficult."""
        return {c: self._class_ap(c) for c in range(1, self.num_classes + 1)}

    def mean(self) -> float:
        """The mean AP (0..1) over the classes with ground truth; NaN when none has any."""
        aps = [a for a in self.per_class().values() if not math.isnan(a)]
        return sum(aps) / len(aps) if aps else math.nan

    def _class_ap(self, c: int) -> float:
        from torchvision.ops import box_iou

        npos, scores, outcome = 0, [], []  # outcome per detection: 1 TP, 0 FP, -1 ignored (difficult)
        for pred, gt in self.images:
            mine = gt["labels"] == c
            boxes, difficult = gt["boxes"][mine], gt["difficult"][mine]
            npos += int((~difficult).sum())
            keep = pred["labels"] == c
            dets, sc = pred["boxes"][keep], pred["scores"][keep]
            scores.append(sc)
            outcome.append(torch.zeros(len(sc), dtype=torch.int8))
            if not len(sc) or not len(boxes):
                continue
            order = torch.sort(sc, descending=True, stable=True).indices  # the image's part of the global order
            best_iou, best = box_iou(dets, boxes).max(1)
            taken = torch.zeros(len(boxes), dtype=torch.bool)
            for i in order[best_iou[order] >= self.iou].tolist():  # the rest are false positives
                j = int(best[i])
                if difficult[j]:
                    outcome[-1][i] = -1
                elif not taken[j]:
                    outcome[-1][i], taken[j] = 1, True
        if npos == 0:
            return math.nan
        order = torch.sort(torch.cat(scores), descending=True, stable=True).indices
        result = torch.cat(outcome)[order]
        result = result[result >= 0]
        tp = (result == 1).double().cumsum(0)
        fp = (result == 0).double().cumsum(0)
        return voc_ap(tp / npos, tp / (tp + fp).clamp_min(1e-12), self.use_07)
