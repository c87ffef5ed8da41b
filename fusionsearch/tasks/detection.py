"""``det``: object detection, Faster R-CNN's region heads on a column's last feature map, built
from torchvision's parts (``AnchorGenerator``, ``RPNHead``, ``RegionProposalNetwork``,
``MultiScaleRoIAlign``, ``TwoMLPHead``, ``FastRCNNPredictor``, ``RoIHeads``): no box coder,
sampler, NMS or loss of our own.

The cross-stitch paper (Misra et al. 2016, Table 6) trains Fast R-CNN on selective-search
proposals; no proposals come with a data set here, so a region proposal network makes them
(Faster R-CNN, Ren et al. 2015), and the rest is Fast R-CNN's: 64 RoIs per image at 1:3
foreground:background (``fg_fraction`` 0.25, ``rois_per_image`` 64: the paper's 128 RoIs over 2
images), RoI pooling to 7x7, fc6/fc7, a (C + 1)-way classifier and per-class box regression.

The head (``RegionHead``) first projects the features to ``channels`` (256) with a 1x1 conv and
ReLU: fc6 on a 7x7 RoI of a ResNet-50's 2048 channels would hold 100M weights, on 256 channels
13M (AlexNet's pool5 had 256). It does not run the region heads when the net runs: torchvision's
RPN and RoI heads need the ground truth inside their forward in training (to sample anchors and
RoIs), so in train mode it returns a ``RegionOutput`` (the features, the image size and itself)
and ``Detection.loss`` runs them with the batch's targets; in eval mode the output carries the
detections as well (what ``Detection.update`` scores, and what a latency measurement times). The region heads run
in fp32 also under AMP: box coding and NMS are not made for bf16.

Anchors: ``anchor_sizes`` in pixels if given; by default five sizes relative to the input, 1/16,
1/8, 1/4, 1/2 and 1 of the image's shorter side (32..512 at 512 px, torchvision's FPN sizes), each
at ``aspect_ratios`` (0.5, 1, 2), on the one feature map, so a net trained at 64 px and one at
512 px both cover their objects.

Images that do not label the task (``labelled`` False) are dropped before any loss or metric;
a labelled image without boxes is a negative (every proposal there is background). "Difficult"
objects are left out of the training targets (py-faster-rcnn's ``use_diff=False``) and ignored by
the metric. The metric is VOC AP@0.5 (``tasks.voc``), averaged over the classes with ground
truth, in %.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fusionsearch.errors import DataError, PlanError
from fusionsearch.tasks.boxes import BOXES, RegionOutput
from fusionsearch.tasks.task import Task, register_task
from fusionsearch.tasks.voc import VOCEvaluator

__all__ = ["Detection", "RegionHead", "RELATIVE_ANCHORS"]

RELATIVE_ANCHORS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)  # x the image's shorter side

Target = Mapping[str, Tensor]


class RegionHead(nn.Module):
    """Faster R-CNN's RPN and Fast R-CNN's RoI heads (torchvision's) on one feature map, behind a
    1x1 projection to ``channels``; ``forward`` defers them (``RegionOutput``), ``losses`` and
    ``detect`` run them. Arguments as ``Detection``'s."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: int = 256,
        representation: int = 1024,
        roi_size: int = 7,
        anchor_sizes: Sequence[float] | None = None,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        fg_fraction: float = 0.25,
        rois_per_image: int = 64,
        score_thresh: float = 0.05,
        nms: float = 0.3,
        detections_per_image: int = 100,
        proposals: Sequence[int] = (1000, 300),
    ) -> None:
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.roi_heads import RoIHeads
        from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
        from torchvision.ops import MultiScaleRoIAlign

        super().__init__()
        self.anchor_sizes = None if anchor_sizes is None else tuple(float(s) for s in anchor_sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self._anchors_for: tuple[int, int] | None = None
        self.project = nn.Sequential(nn.Conv2d(in_channels, channels, 1), nn.ReLU(inplace=True))
        n_anchors = len(self.anchor_sizes or RELATIVE_ANCHORS) * len(self.aspect_ratios)
        train_n, test_n = int(proposals[0]), int(proposals[1])
        self.rpn = RegionProposalNetwork(
            self._anchor_generator((512, 512)),
            RPNHead(channels, n_anchors),
            fg_iou_thresh=0.7,  # Faster R-CNN's RPN settings, torchvision's defaults
            bg_iou_thresh=0.3,
            batch_size_per_image=256,
            positive_fraction=0.5,
            pre_nms_top_n={"training": 2 * train_n, "testing": 2 * test_n},
            post_nms_top_n={"training": train_n, "testing": test_n},
            nms_thresh=0.7,
        )
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(["0"], roi_size, sampling_ratio=2),
            TwoMLPHead(channels * roi_size**2, representation),
            FastRCNNPredictor(representation, num_classes + 1),
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            batch_size_per_image=rois_per_image,
            positive_fraction=fg_fraction,
            bbox_reg_weights=None,
            score_thresh=score_thresh,
            nms_thresh=nms,
            detections_per_img=detections_per_image,
        )

    def forward(self, x: Tensor, size: tuple[int, int]) -> RegionOutput:
        if self.training:  # the losses need the targets: ``Detection.loss`` runs the heads
            return RegionOutput(x, size, self)
        with torch.no_grad():  # eval: detect now (an evaluation, a latency measurement)
            return RegionOutput(x, size, self, self.detect(x, size))

    def anchor_sizes_for(self, size: tuple[int, int]) -> tuple[float, ...]:
        """The anchor sizes (pixels) at an input of ``size`` (H, W)."""
        return self.anchor_sizes or tuple(f * min(size) for f in RELATIVE_ANCHORS)

    def _anchor_generator(self, size: tuple[int, int]) -> nn.Module:
        from torchvision.models.detection.anchor_utils import AnchorGenerator

        return AnchorGenerator((self.anchor_sizes_for(size),), (self.aspect_ratios,))

    def _run(self, features: Tensor, size: tuple[int, int], targets: list[dict[str, Tensor]] | None) -> Any:
        """The RPN, then the RoI heads, in fp32, in train mode when ``targets`` are given: (the
        detections (eval), the losses (train))."""
        from torchvision.models.detection.image_list import ImageList

        if self.anchor_sizes is None and self._anchors_for != size:  # relative anchors: per input size
            self.rpn.anchor_generator = self._anchor_generator(size)
            self._anchors_for = size
        with _mode(self, targets is not None), torch.autocast(features.device.type, enabled=False):
            x = self.project(features.float())
            # the anchor generator reads the image size from the tensor's shape only: no image needed
            images = ImageList(x.new_zeros(()).expand(len(x), 1, *size), [size] * len(x))
            maps = {"0": x}
            proposals, rpn_losses = self.rpn(images, maps, targets)
            detections, roi_losses = self.roi_heads(maps, proposals, images.image_sizes, targets)
        return detections, {**rpn_losses, **roi_losses}

    def losses(self, features: Tensor, size: tuple[int, int], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """torchvision's four losses (RPN objectness and box regression, RoI classification and
        box regression) of the images of ``features`` against ``targets`` (one dict each)."""
        return self._run(features, size, targets)[1]

    def detect(self, features: Tensor, size: tuple[int, int]) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes" (n, 4) xyxy pixels, "labels" (n,) 1..C, "scores" (n,)}``, after
        the score threshold and per-class NMS."""
        return self._run(features, size, None)[0]


@contextlib.contextmanager
def _mode(head: RegionHead, training: bool) -> Iterator[None]:
    """The RPN and RoI heads in train (sampling, losses) or eval (NMS, detections) mode whatever
    the net's mode: their modules have no BatchNorm or dropout, the mode picks what they compute."""
    before = head.rpn.training, head.roi_heads.training
    head.rpn.train(training)
    head.roi_heads.train(training)
    try:
        yield
    finally:
        head.rpn.train(before[0])
        head.roi_heads.train(before[1])


@register_task("det")
class Detection(Task):
    """Object detection: Faster R-CNN's region heads; VOC mAP@0.5 (%).

    Object detection (``boxes`` labels, classes 1..C): Faster R-CNN's region heads from
    torchvision's parts, the sum of its four losses; VOC mAP@0.5 (%) over the classes with
    ground truth (``use_07``: the 11-point VOC2007 AP). ``out_channels`` is C, without the
    background (the classifier has C + 1 outputs). The module's docstring has the details."""

    label = BOXES
    metrics = {"map": True}
    primary = "map"

    def __init__(
        self,
        out_channels: int,
        loss_weight: float = 1.0,
        fg_fraction: float = 0.25,
        rois_per_image: int = 64,
        anchor_sizes: Sequence[float] | None = None,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        score_thresh: float = 0.05,
        nms: float = 0.3,
        detections_per_image: int = 100,
        use_07: bool = False,
        channels: int = 256,
        representation: int = 1024,
        roi_size: int = 7,
        proposals: Sequence[int] = (1000, 300),
    ) -> None:
        self.use_07 = bool(use_07)
        super().__init__(out_channels, loss_weight)
        self.head_args: dict[str, Any] = {
            "channels": int(channels),
            "representation": int(representation),
            "roi_size": int(roi_size),
            "anchor_sizes": anchor_sizes,
            "aspect_ratios": aspect_ratios,
            "fg_fraction": float(fg_fraction),
            "rois_per_image": int(rois_per_image),
            "score_thresh": float(score_thresh),
            "nms": float(nms),
            "detections_per_image": int(detections_per_image),
            "proposals": proposals,
        }
        _check(self.out_channels, self.head_args)

    def head(self, in_channels: int) -> nn.Module:
        return RegionHead(in_channels, self.out_channels, **self.head_args)

    def loss(self, pred: RegionOutput, target: Sequence[Target]) -> Tensor:  # type: ignore[override]
        keep = _labelled(target)
        if not keep:  # nothing labelled: zero, with a graph and zero gradient
            return pred.features.sum() * 0
        targets = [self._train_target(target[i]) for i in keep]
        losses = pred.head.losses(pred.features[keep], pred.size, targets)
        return torch.stack(list(losses.values())).sum()

    def _train_target(self, t: Target) -> dict[str, Tensor]:
        boxes, labels = t["boxes"].float().reshape(-1, 4), t["labels"].long().reshape(-1)
        if len(labels) and (int(labels.min()) < 1 or int(labels.max()) > self.out_channels):
            raise DataError(
                f"task 'det': box labels must be classes 1..{self.out_channels} (0 is the background),"
                f" got {sorted(set(labels.tolist()))}"
            )
        if "difficult" in t:  # py-faster-rcnn's use_diff=False: difficult objects are not trained on
            easy = ~t["difficult"].bool().reshape(-1)
            boxes, labels = boxes[easy], labels[easy]
        return {"boxes": boxes, "labels": labels}

    def detect(self, pred: RegionOutput) -> list[dict[str, Tensor]]:
        """Every image's detections: ``{"boxes", "labels", "scores"}`` (torchvision's outputs)."""
        if pred.detections is not None:
            return pred.detections
        with torch.no_grad():
            return pred.head.detect(pred.features, pred.size)

    def reset(self) -> None:
        self.evaluator = VOCEvaluator(self.out_channels, 0.5, self.use_07)

    def update(self, pred: RegionOutput, target: Sequence[Target]) -> None:  # type: ignore[override]
        keep = _labelled(target)
        if keep:
            self.evaluator.add(self.detect(pred.select(keep)), [target[i] for i in keep])

    def per_class(self) -> dict[int, float]:
        """AP (%) of each class 1..C over everything added since ``reset``; NaN for a class
        without ground truth (that is not difficult)."""
        return {c: 100 * ap for c, ap in self.evaluator.per_class().items()}

    def per_category(self) -> dict[str, float]:
        """``per_class`` keyed by the class index as a string."""
        return {str(c): ap for c, ap in self.per_class().items()}

    def compute(self) -> dict[str, float]:
        mean = self.evaluator.mean()
        return {"map": 0.0 if math.isnan(mean) else 100 * mean}


def _labelled(target: Sequence[Target]) -> list[int]:
    return [i for i, t in enumerate(target) if bool(t["labelled"])]


def _check(classes: int, args: Mapping[str, Any]) -> None:
    """A ``PlanError`` naming the first argument of ``det`` out of its range."""
    problems = {
        "out_channels": classes < 1,
        "fg_fraction": not 0 < args["fg_fraction"] <= 1,
        "rois_per_image": args["rois_per_image"] < 1,
        "anchor_sizes": args["anchor_sizes"] is not None
        and (not len(args["anchor_sizes"]) or min(args["anchor_sizes"]) <= 0),
        "aspect_ratios": not len(args["aspect_ratios"]) or min(args["aspect_ratios"]) <= 0,
        "score_thresh": not 0 <= args["score_thresh"] < 1,
        "nms": not 0 < args["nms"] <= 1,
        "detections_per_image": args["detections_per_image"] < 1,
        "channels": args["channels"] < 1,
        "proposals": len(args["proposals"]) != 2 or min(args["proposals"]) < 1,
    }
    bad = next((k for k, v in problems.items() if v), None)
    if bad is not None:
        value = classes if bad == "out_channels" else args[bad]
        raise PlanError(f"task 'det': {bad} out of range, got {value!r}")
