"""``box_attr``: RoIs from jittered ground-truth boxes, background RoIs that add nothing to the
loss, unlabelled images and -1 attributes that count nowhere, evaluation on the ground-truth boxes
(aPascal's protocol), its head on stitched and token backbones, and a loss that ``fit`` lowers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.utils.data import Dataset

import fusionsearch as fs
from fusionsearch.errors import DataError, PlanError
from fusionsearch.tasks import BOXES
from fusionsearch.tasks.attributes import attribute_ap, attribute_loss
from fusionsearch.tasks.box_attributes import BoxAttrHead, BoxAttributes, jitter_boxes, match_attributes
from fusionsearch.tasks.boxes import RegionOutput, make_boxes
from fusionsearch.train.config import TrainConfig
from fusionsearch.train.trainer import evaluate, fit

A = 3
SIZE = (32, 32)


def _pred(batch: int = 2, seed: int = 0) -> RegionOutput:
    torch.manual_seed(seed)
    head = BoxAttrHead(8, A, roi_size=3, hidden=16)
    return head(torch.randn(batch, 8, 8, 8, requires_grad=True), SIZE)


def test_jittered_rois_follow_their_boxes_and_the_seed():
    boxes = torch.tensor([[4.0, 4.0, 20.0, 12.0], [0.0, 10.0, 30.0, 32.0]])
    rois = jitter_boxes(boxes, SIZE, 3, 0.2, torch.Generator().manual_seed(1))
    assert rois.shape == (8, 4) and torch.equal(rois[:2], boxes)  # the boxes themselves come first
    again = jitter_boxes(boxes, SIZE, 3, 0.2, torch.Generator().manual_seed(1))
    assert torch.equal(rois, again) and not torch.equal(rois, jitter_boxes(boxes, SIZE, 3, 0.2))
    assert (rois >= 0).all() and (rois[:, [0, 2]] <= SIZE[1]).all() and (rois[:, [1, 3]] <= SIZE[0]).all()
    copies = rois[2:].reshape(3, 2, 4)
    centre, wh = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
    inner = copies[:, 0]  # the first box lies well inside the image: nothing clipped
    assert ((inner[:, :2] + inner[:, 2:]) / 2 - centre[0]).abs().le(0.2 * wh[0] + 1e-5).all()
    assert ((inner[:, 2:] - inner[:, :2]) / wh[0] - 1).abs().le(0.2 + 1e-5).all()
    assert torch.equal(jitter_boxes(boxes, SIZE, 2, 0.0), boxes.repeat(3, 1))
    assert jitter_boxes(torch.zeros(0, 4), SIZE, 4, 0.2).shape == (0, 4)


def test_an_roi_carries_the_attributes_of_the_box_it_overlaps_most_from_iou_one_half():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    attrs = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]])
    rois = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # the first box: IoU 1
            [1.0, 1.0, 11.0, 11.0],  # IoU 81 / 119 = 0.68: foreground
            [5.0, 5.0, 15.0, 15.0],  # IoU 25 / 175 = 0.14: background
            [21.0, 20.0, 31.0, 30.0],  # the second box at IoU 0.82
            [0.0, 0.0, 10.0, 20.0],  # IoU exactly 0.5: foreground
            [3.0, 3.0, 3.0, 9.0],  # degenerate: overlaps nothing
        ]
    )
    got = match_attributes(rois, boxes, attrs)
    bg = [-1.0] * A
    assert got.tolist() == [attrs[0].tolist(), attrs[0].tolist(), bg, attrs[1].tolist(), attrs[0].tolist(), bg]
    assert match_attributes(rois, boxes, attrs, fg_iou=0.7)[1].tolist() == bg
    assert match_attributes(rois, torch.zeros(0, 4), torch.zeros(0, A)).eq(-1).all()


def test_a_background_roi_adds_nothing_to_the_loss_and_a_foreground_one_does():
    task = BoxAttributes(A, rois_per_box=6, jitter=0.6)
    target = [make_boxes([[4, 4, 20, 20], [12, 2, 30, 14]], [1, 2], attrs=[[1, 0, 1], [0, 1, -1]]), make_boxes([], [])]
    pred = _pred()
    torch.manual_seed(3)
    rois, targets = task.regions(target, SIZE)
    assert len(rois[0]) == 14 and len(rois[1]) == 0 and targets.shape == (14, A)
    bg = targets.eq(-1).all(1)
    assert 0 < int(bg.sum()) < 12 and not bg[:2].any()  # the jitter makes some background; GT never is
    logits = pred.head.predict(pred.features, rois, pred.size)
    torch.manual_seed(3)  # the same draw: the loss trains on these RoIs
    loss = task.loss(pred, target)
    torch.testing.assert_close(loss, attribute_loss(logits[~bg], targets[~bg]))
    moved = logits.detach().clone()
    moved[bg] += 5.0  # the background RoIs' predictions change nothing
    assert attribute_loss(moved, targets) == pytest.approx(loss.item())
    moved[(~bg).nonzero()[0]] += 5.0  # a foreground one's does
    assert attribute_loss(moved, targets) != pytest.approx(loss.item())
    leaf = logits.detach().requires_grad_()
    attribute_loss(leaf, targets).backward()
    assert (leaf.grad[bg] == 0).all() and (leaf.grad[targets >= 0] != 0).all()
    assert (leaf.grad[targets < 0] == 0).all()  # the -1 attributes of foreground RoIs too


def test_an_unlabelled_image_adds_nothing_to_the_loss_or_the_metrics():
    task = BoxAttributes(A, rois_per_box=2)
    seen = make_boxes([[2, 2, 18, 26], [10, 0, 32, 12]], [1, 1], attrs=[[1, 0, 1], [0, 1, 0]])
    hidden = make_boxes([[0, 0, 30, 30]], [3], attrs=[[1, 1, 1]], labelled=False)
    pred = _pred()
    one = RegionOutput(pred.features[:1], SIZE, pred.head)
    torch.manual_seed(0)
    both = task.loss(pred, [seen, hidden])
    torch.manual_seed(0)
    torch.testing.assert_close(both, task.loss(one, [seen]))
    task.update(pred, [seen, hidden])
    first = (task.compute(), task.per_attribute())
    task.reset()
    task.update(one, [seen])
    assert task.compute() == first[0] and int(first[1]["positives"].sum()) == 3
    nothing = [BOXES.unlabelled_like(hidden), make_boxes([[0, 0, 9, 9]], [1]), make_boxes([], [], num_attrs=A)]
    zero = task.loss(_pred(3), nothing)  # unlabelled, boxes without attrs, a labelled negative
    assert zero.item() == 0 and zero.requires_grad
    zero.backward()
    assert all(p.grad is None or (p.grad == 0).all() for p in pred.head.parameters())
    task.reset()
    task.update(_pred(3), nothing)
    assert task.compute() == {"map": 0.0, "mean_acc": 0.0} and not task.scores
    with pytest.raises(DataError, match="3 attributes per box"):
        task.loss(pred, [make_boxes([[0, 0, 4, 4]], [1], attrs=[[1, 0]])])


def test_evaluation_scores_the_ground_truth_boxes_and_ignores_unlabelled_attributes():
    task = BoxAttributes(A, names=["red", "green", "blue"])
    batches = [
        [make_boxes([[1, 1, 9, 9], [8, 8, 30, 20]], [1, 2], attrs=[[1, 0, -1], [0, 1, 0]]),
         make_boxes([[0, 10, 16, 30]], [1], attrs=[[1, 1, 1]])],
        [make_boxes([[4, 2, 28, 30]], [2], attrs=[[0, -1, 1]]), make_boxes([], [], num_attrs=A)],
    ]  # fmt: skip
    preds = [_pred(2, seed=1), _pred(2, seed=1)]
    preds[1] = RegionOutput(torch.randn(2, 8, 8, 8), SIZE, preds[0].head)
    scores, targets = [], []
    for pred, target in zip(preds, batches):
        task.update(pred, target)
        with torch.no_grad():
            scores.append(pred.head.predict(pred.features, [t["boxes"] for t in target], SIZE).sigmoid())
        targets.append(torch.cat([t["attrs"] for t in target]))
    score, target = torch.cat(scores), torch.cat(targets)
    assert score.shape == (4, A)
    ap = attribute_ap(score, target)
    out = task.compute()
    assert out["map"] == pytest.approx(100 * ap[~ap.isnan()].mean().item(), abs=1e-4)
    keep = target >= 0
    acc = [((score[:, a] >= 0.5).float() == target[:, a])[keep[:, a]].float().mean().item() for a in range(A)]
    assert out["mean_acc"] == pytest.approx(100 * sum(acc) / A, abs=1e-4)
    assert task.per_category() == pytest.approx({"red": 100 * ap[0].item(), "green": 100 * ap[1].item(),
                                                 "blue": 100 * ap[2].item()})  # fmt: skip
    assert task.per_attribute()["positives"].tolist() == [2, 2, 2]


def test_bad_arguments_are_named():
    for key, bad in (("rois_per_box", -1), ("jitter", 1.5), ("fg_iou", 0), ("roi_size", 0), ("hidden", 2.5)):
        with pytest.raises(PlanError, match=key):
            BoxAttributes(A, **{key: bad})
    with pytest.raises(PlanError, match="names"):
        BoxAttributes(A, names=["a"])
    with pytest.raises(PlanError, match="'box_attr': pos_weight"):
        BoxAttributes(A, pos_weight=[1.0])


@pytest.mark.parametrize("backbone", ["test_resnet", "vit_tiny_patch16_224"])
def test_the_head_runs_in_stitched_and_token_backbones(backbone):
    if backbone == "test_resnet":
        plan, extra = fs.StitchPlan(at=["layer2"], unit="cross_stitch"), {}
    else:
        plan, extra = fs.StitchPlan(at=["blocks.5"], unit="cross_stitch"), {"img_size": 64, "input_size": (3, 64, 64)}
    net = fs.build(backbone, {"box_attr": 5, "seg": 3}, plan, task_args={"box_attr": {"hidden": 32}}, **extra)
    out = net(torch.randn(2, 3, 64, 64))
    pred = out["box_attr"].float()
    assert isinstance(pred, RegionOutput) and pred.features.dim() == 4 and out["seg"].shape == (2, 3, 64, 64)
    task = BoxAttributes(5, hidden=32)
    target = [make_boxes([[4, 4, 40, 60]], [1], attrs=[[1, 0, 1, 0, -1]]), make_boxes([[0, 0, 64, 30]], [2],
              attrs=[[0, 1, 0, 1, 1]])]  # fmt: skip
    task.loss(pred, target).backward()
    grads = [p.grad for p in net.columns[0].parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    task.update(pred, target)
    assert set(task.compute()) == {"map", "mean_acc"}


COLOURS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])


class ColourBoxes(Dataset):
    """Grey 64 px images with one or two rectangles, each red, green or blue; a box's attributes
    are its colour, one-hot (the third entry of a red box unlabelled, to be ignored)."""

    tasks = {"box_attr": A}

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(i)
        image = torch.zeros(3, 64, 64)
        boxes, attrs = [], []
        for _ in range(1 + i % 2):
            x, y = torch.randint(0, 32, (2,), generator=g).tolist()
            w, h = torch.randint(16, 32, (2,), generator=g).tolist()
            c = int(torch.randint(0, 3, (1,), generator=g))
            image[:, y : y + h, x : x + w] = COLOURS[c][:, None, None]
            boxes.append([x, y, x + w, y + h])
            attrs.append([1.0 if k == c else (-1.0 if c == 0 and k == 2 else 0.0) for k in range(A)])
        return {"image": image, "box_attr": make_boxes(boxes, [1] * len(boxes), attrs=attrs)}


def test_fit_lowers_the_box_attribute_loss_on_a_learnable_set():
    data = ColourBoxes()
    torch.manual_seed(0)
    net = fs.build("test_resnet", {"box_attr": A}, task_args={"box_attr": {"hidden": 64}})
    tasks = {"box_attr": BoxAttributes(A, hidden=64)}
    cfg = TrainConfig(steps=20, batch_size=4, base_lr=0.003, optimizer="adamw", eval_every=20, progress=False)
    history = fit(net, tasks, data, data, cfg, device="cpu")
    losses = history["losses"]
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4]), losses
    assert set(history["evals"][-1]["metrics"]["box_attr"]) == {"map", "mean_acc"}
    metrics = evaluate(net, tasks, data, batch_size=3, device="cpu")["box_attr"]
    assert metrics["map"] > 50


def test_an_attribute_never_labelled_on_a_box_is_nan_and_left_out_of_map():
    task = BoxAttributes(A, names=["red", "big", "old"])
    target = [make_boxes([[1, 1, 9, 9], [8, 8, 30, 20]], [1, 2], attrs=[[1, -1, 0], [0, -1, 0]])]
    task.update(_pred(1), target)
    per = task.per_category()
    assert list(per) == ["red", "big", "old"] and math.isfinite(per["red"])
    assert math.isnan(per["big"]) and math.isnan(per["old"])
    assert task.compute()["map"] == pytest.approx(per["red"])
