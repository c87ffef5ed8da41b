"""VOC AP (``tasks.voc``) against values worked out by hand on small cases: the devkit's matching
(highest-IoU ground truth, duplicates false, difficult ignored), its stable order for ties,
all-point vs 11-point, classes without ground truth; and against torchmetrics' COCO-style AP@0.5
on a random case where the two rules agree up to the 101-point sampling."""

from __future__ import annotations

import math

import pytest
import torch

from fusionsearch.tasks.boxes import make_boxes
from fusionsearch.tasks.voc import VOCEvaluator, voc_ap

A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 20.0, 30.0, 30.0]
FAR = [40.0, 40.0, 50.0, 50.0]


def dets(boxes, scores, labels=None):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels if labels is not None else [1] * len(scores)),
    }


def ap_of(pairs, classes=1, **kw):
    ev = VOCEvaluator(classes, **kw)
    for d, t in pairs:
        ev.add([d], [t])
    return ev


def test_voc_ap_all_point_and_11_point_on_one_curve():
    # TP, FP, TP with 2 positives: recall .5 .5 1, precision 1 .5 2/3
    rec, prec = [0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]
    assert voc_ap(rec, prec) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert voc_ap(rec, prec, use_07=True) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert voc_ap([], []) == 0.0 and voc_ap([], [], use_07=True) == 0.0
    # the envelope: a later higher precision lifts the earlier recall levels
    assert voc_ap([0.25, 0.5, 1.0], [0.5, 1.0, 0.5]) == pytest.approx(0.5 * 1 + 0.5 * 0.5)


def test_perfect_detections_give_100():
    ev = ap_of([(dets([A, B], [0.9, 0.8]), make_boxes([A, B], [1, 1])), (dets([B], [0.3]), make_boxes([B], [1]))])
    assert ev.per_class() == {1: 1.0} and ev.mean() == 1.0


def test_a_false_positive_ranked_first_and_the_11_point_metric():
    gt = make_boxes([A, B], [1, 1])
    ev = ap_of([(dets([FAR, A, B], [0.9, 0.8, 0.7]), gt)])
    assert ev.mean() == pytest.approx(2 / 3)  # recall 0 .5 1, precision 0 .5 2/3
    between = dets([A, FAR, B], [0.9, 0.8, 0.7])
    assert ap_of([(between, gt)]).mean() == pytest.approx(5 / 6)
    assert ap_of([(between, gt)], use_07=True).mean() == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_ties_keep_the_order_of_addition():
    # the same score on a false and a true positive: the one added first ranks first (stable sort)
    wrong, right = (dets([FAR], [0.5]), make_boxes([B], [1])), (dets([A], [0.5]), make_boxes([A], [1]))
    assert ap_of([wrong, right]).mean() == pytest.approx(0.5 * 0.5)  # FP, TP: recall 0, .5, 1 over 2 GT
    assert ap_of([right, wrong]).mean() == pytest.approx(0.5 * 1.0)  # TP, FP
    within = (dets([FAR, A], [0.5, 0.5]), make_boxes([A], [1]))
    assert ap_of([within]).mean() == pytest.approx(0.5)


def test_a_class_without_ground_truth_is_nan_and_left_out_of_the_mean():
    ev = ap_of([(dets([A, B], [0.9, 0.8], [1, 2]), make_boxes([A], [1]))], classes=3)
    per = ev.per_class()
    assert per[1] == 1.0 and math.isnan(per[2]) and math.isnan(per[3]) and ev.mean() == 1.0
    assert math.isnan(VOCEvaluator(2).mean())


def test_difficult_objects_are_neither_positives_nor_false_detections():
    boxes = dets([FAR, A, B], [0.95, 0.9, 0.8])
    hard = make_boxes([A, B], [1, 1], difficult=[True, False])
    assert ap_of([(boxes, hard)]).mean() == pytest.approx(0.5)  # FP, (ignored), TP over 1 positive
    assert ap_of([(boxes, make_boxes([A, B], [1, 1]))]).mean() == pytest.approx(2 / 3)
    only_hard = ap_of([(dets([A], [0.9]), make_boxes([A], [1], difficult=[True]))])
    assert math.isnan(only_hard.mean())


def test_a_duplicate_is_false_and_the_best_overlap_decides():
    gt = make_boxes([A, B], [1, 1])
    assert ap_of([(dets([A, A, B], [0.9, 0.8, 0.7]), gt)]).mean() == pytest.approx(5 / 6)  # TP, FP, TP
    # the devkit's rule: the second detection's best ground truth (IoU 1) is taken, so it is a false
    # positive although the other one (IoU 0.83) is free (COCO would match it)
    nested = make_boxes([A, [0.0, 0.0, 10.0, 12.0]], [1, 1])
    assert ap_of([(dets([A, A], [0.9, 0.8]), nested)]).mean() == pytest.approx(0.5)


def test_the_overlap_threshold_is_inclusive_and_iou_continuous():
    half = make_boxes([[0.0, 0.0, 10.0, 20.0]], [1])  # IoU exactly 0.5 without the +1 convention
    assert ap_of([(dets([A], [0.9]), half)]).mean() == 1.0
    assert ap_of([(dets([A], [0.9]), half)], iou=0.51).mean() == 0.0


def test_unlabelled_images_count_nowhere_and_lengths_must_agree():
    ev = ap_of([(dets([A], [0.9]), make_boxes([A], [1])), (dets([FAR], [0.99]), make_boxes([B], [1], labelled=False))])
    assert ev.mean() == 1.0
    with pytest.raises(ValueError, match="2 images of detections but 1"):
        ev.add([dets([A], [0.9])] * 2, [make_boxes([A], [1])])


def _random_case(seed: int, classes: int = 3, images: int = 12):
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(images):
        n = int(torch.randint(1, 4, (), generator=g))
        # objects on a grid of 40-pixel cells: ground truths never overlap, so the devkit's and
        # COCO's matching rules agree and only the interpolation differs
        cells = torch.randperm(9, generator=g)[:n]
        xy = torch.stack([cells % 3, cells // 3], 1).float() * 40 + 2
        wh = 10 + 25 * torch.rand(n, 2, generator=g)
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(1, classes + 1, (n,), generator=g)
        hit = boxes + 3 * torch.randn(n, 4, generator=g)  # some below IoU 0.5
        corner = 100 * torch.rand(2, 2, generator=g)
        fp = torch.cat([corner, corner + 5 + 20 * torch.rand(2, 2, generator=g)], 1)
        pred_labels = torch.cat(
            [
                torch.where(torch.rand(n, generator=g) < 0.8, labels, labels % classes + 1),
                torch.randint(1, classes + 1, (2,), generator=g),
            ]
        )
        preds.append({"boxes": torch.cat([hit, fp]), "scores": torch.rand(n + 2, generator=g), "labels": pred_labels})
        targets.append({"boxes": boxes, "labels": labels})
    return preds, targets


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_torchmetrics_coco_ap_at_half_up_to_interpolation(seed):
    pytest.importorskip("pycocotools", reason="torchmetrics' detection mAP needs pycocotools (the dev extra)")
    from torchmetrics.detection import MeanAveragePrecision

    preds, targets = _random_case(seed)
    ours = VOCEvaluator(3)
    ours.add(preds, targets)
    coco = MeanAveragePrecision(iou_thresholds=[0.5], class_metrics=True)
    coco.update(preds, targets)
    result = coco.compute()
    theirs = dict(zip(result["classes"].tolist(), result["map_per_class"].tolist()))
    per = ours.per_class()
    assert set(theirs) == set(per)
    for c, ap in per.items():
        # COCO samples the envelope at 101 recall levels, the all-point area integrates it: they
        # differ by at most one recall step's width (0.01) times the precision, plus float noise
        assert ap == pytest.approx(theirs[c], abs=0.011), c
    assert 0.2 < ours.mean() < 0.95  # a case with misses, false positives and hits
