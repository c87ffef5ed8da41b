"""``det`` (issue 32): torchvision's region heads on a column's last map. Predictions in eval are
torchvision's list of dicts; the loss trains (it falls over a few steps of ``fit``); an unlabelled
image adds nothing, a labelled empty one is a negative; token backbones and stitched nets with a
dense task; ``evaluate`` reports VOC mAP; boxes move with an item's resize and flip."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Dataset

import fusionsearch as fs
from fusionsearch.data.transforms import hflip_dense, resize_dense
from fusionsearch.errors import DataError, PlanError
from fusionsearch.tasks import BOXES, get_task
from fusionsearch.tasks.boxes import RegionOutput, empty_boxes, make_boxes
from fusionsearch.tasks.detection import Detection
from fusionsearch.train import TrainConfig, evaluate, fit

SIZE = 64


def scene(i: int, classes: int = 3) -> dict:
    """Image ``i`` of a fixed set: one or two flat rectangles on a dark ground, class c painted in
    colour channel c - 1, with their boxes and (for a ``seg`` task) their class map."""
    g = torch.Generator().manual_seed(i)
    image, seg, boxes, labels = torch.full((3, SIZE, SIZE), 0.1), torch.zeros(SIZE, SIZE, dtype=torch.long), [], []
    for _ in range(1 + i % 2):
        c = int(torch.randint(1, classes + 1, (), generator=g))
        x0, y0 = (int(v) for v in torch.randint(0, SIZE - 28, (2,), generator=g))
        w, h = (int(v) for v in torch.randint(16, 28, (2,), generator=g))
        image[c - 1, y0 : y0 + h, x0 : x0 + w] = 0.9
        seg[y0 : y0 + h, x0 : x0 + w] = c
        boxes.append([x0, y0, x0 + w, y0 + h])
        labels.append(c)
    return {"image": image, "det": make_boxes(boxes, labels), "seg": seg}


class Rectangles(Dataset):
    """A few synthetic scenes labelled for ``det`` (and ``seg`` when asked)."""

    def __init__(self, n: int = 8, seg: bool = False) -> None:
        self.tasks = {"det": 3, **({"seg": 4} if seg else {})}
        self.items = [{k: v for k, v in scene(i).items() if k in ("image", *self.tasks)} for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


SMALL = {"channels": 32, "representation": 128}  # a small fc6/fc7: the CPU tests train it for seconds


def cfg(steps: int, **kw) -> TrainConfig:
    return TrainConfig(**{"batch_size": 4, **kw}, steps=steps, progress=False, num_workers=0, eval_every=steps)


def test_eval_gives_torchvision_detections_and_train_defers_them():
    net = fs.build("test_resnet", {"det": 3}, init_seed=0)
    x = torch.stack([scene(i)["image"] for i in range(2)])
    out = net.train()(x)["det"]
    assert isinstance(out, RegionOutput) and out.float() is out and out.detections is None
    assert out.size == (SIZE, SIZE) and out.features.shape[:2] == (2, 96)
    with torch.no_grad():
        out = net.eval()(x)["det"]
    dets = Detection(3).detect(out)
    assert len(dets) == 2 and dets is out.detections
    for d in dets:
        assert set(d) == {"boxes", "labels", "scores"} and d["boxes"].shape == (len(d["scores"]), 4)
        assert d["labels"].dtype == torch.int64 and bool(((d["labels"] >= 1) & (d["labels"] <= 3)).all())
        assert bool((d["boxes"] >= 0).all() and (d["boxes"] <= SIZE).all())  # clipped to the image
    assert out.head.anchor_sizes_for((SIZE, SIZE)) == (4.0, 8.0, 16.0, 32.0, 64.0)  # 1/16 .. 1 of the side


def test_fit_lowers_the_detection_loss_and_evaluate_reports_map():
    net = fs.build("test_resnet", {"det": 3}, task_args={"det": SMALL}, init_seed=0)
    task = Detection(3, **SMALL)
    data = Rectangles(8)
    history = fit(net, {"det": task}, data, data, cfg(20, base_lr=0.02), device="cpu")
    losses = history["losses"]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses
    metrics = history["evals"][-1]["metrics"]
    assert set(metrics) == {"det"} and set(metrics["det"]) == {"map"} and 0 <= metrics["det"]["map"] <= 100
    again = evaluate(net, {"det": task}, data, batch_size=4, device="cpu")
    assert again == metrics
    per = task.per_category()
    assert set(per) == {"1", "2", "3"} and all(math.isnan(v) or 0 <= v <= 100 for v in per.values())


@pytest.mark.slow
def test_the_detector_learns_the_rectangles():
    # a stride-8 map (dilated): test_resnet's own stride 32 leaves a 2x2 map at 64 px, too coarse to place a box
    net = fs.build("test_resnet", {"det": 3}, task_args={"det": SMALL}, init_seed=0, output_stride=8)
    task, data = Detection(3, **SMALL), Rectangles(16)
    history = fit(net, {"det": task}, data, data, cfg(120, base_lr=0.02, batch_size=8), device="cpu")
    assert history["evals"][-1]["metrics"]["det"]["map"] > 40  # 83 here; 0 at the start


def _head_and_features(seed: int = 0):
    net = fs.build("test_resnet", {"det": 3}, init_seed=seed).train()
    x = torch.stack([scene(i)["image"] for i in range(3)])
    with torch.no_grad():
        feats = net.forward_features(x)[0]
    return net.heads["det"].body, feats.clone().requires_grad_(True)


def _loss(head, feats, targets, seed=0):
    torch.manual_seed(seed)  # the RPN's and RoI heads' samplers draw from torch's generator
    return Detection(3).loss(head(feats, (SIZE, SIZE)), targets)


def test_an_unlabelled_image_adds_nothing_to_the_loss():
    head, feats = _head_and_features()
    labelled = [scene(0)["det"], scene(1)["det"]]
    unlabelled = BOXES.unlabelled_like(scene(2)["det"])
    with_it = _loss(head, feats, [labelled[0], unlabelled, labelled[1]])
    with_it.backward()
    assert feats.grad is not None and float(feats.grad[1].abs().sum()) == 0.0
    assert float(feats.grad[[0, 2]].abs().sum()) > 0
    without = _loss(head, feats[[0, 2]].detach(), labelled)
    assert torch.allclose(with_it.detach(), without)
    feats.grad = None
    none = _loss(head, feats, [unlabelled] * 3)
    none.backward()
    assert none.item() == 0.0 and float(feats.grad.abs().sum()) == 0.0


def test_a_labelled_empty_image_is_a_negative():
    head, feats = _head_and_features()
    out = head(feats[:1], (SIZE, SIZE))
    torch.manual_seed(0)
    losses = out.head.losses(out.features, out.size, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long()}])
    parts = {k: v.item() for k, v in losses.items()}
    assert parts["loss_objectness"] > 0 and parts["loss_classifier"] > 0  # all background
    assert parts["loss_rpn_box_reg"] == 0 and parts["loss_box_reg"] == 0  # nothing to regress
    loss = _loss(head, feats, [empty_boxes(), empty_boxes(), scene(1)["det"]])
    loss.backward()
    assert math.isfinite(loss.item()) and float(feats.grad[0].abs().sum()) > 0


def test_difficult_objects_are_not_trained_on_and_labels_are_checked():
    task = Detection(3)
    hard = make_boxes([[0, 0, 9, 9], [5, 5, 20, 20]], [1, 2], difficult=[True, False])
    assert task._train_target(hard)["labels"].tolist() == [2]
    head, feats = _head_and_features()
    with pytest.raises(DataError, match=r"classes 1\.\.3"):
        _loss(head, feats, [make_boxes([[0, 0, 9, 9]], [4])] * 3)
    with pytest.raises(PlanError, match="fg_fraction"):
        Detection(3, fg_fraction=0)
    with pytest.raises(PlanError, match="out_channels"):
        Detection(0)
    head2 = get_task("det", out_channels=3, fg_fraction=0.5, rois_per_image=16).head(8)
    assert head2.roi_heads.fg_bg_sampler.positive_fraction == 0.5
    assert head2.roi_heads.fg_bg_sampler.batch_size_per_image == 16


def test_region_heads_run_in_fp32_under_autocast():
    head, feats = _head_and_features()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _loss(head, feats, [scene(i)["det"] for i in range(3)])
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())


def test_a_token_backbone_feeds_the_region_heads_a_map():
    net = fs.build("vit_tiny_patch16_224", {"det": 3}, input_size=(3, SIZE, SIZE), img_size=SIZE, init_seed=0)
    x = torch.stack([scene(i)["image"] for i in range(2)])
    out = net.train()(x)["det"]
    assert out.features.shape == (2, 192, 4, 4)  # 16 tokens laid out 4 x 4, the class token dropped
    loss = Detection(3).loss(out, [scene(0)["det"], scene(1)["det"]])
    loss.backward()
    assert math.isfinite(loss.item())
    with torch.no_grad():
        assert len(net.eval()(x)["det"].detections) == 2


def test_a_stitched_net_trains_det_beside_seg():
    plan = fs.StitchPlan(at=["layer2"], unit="cross_stitch")
    net = fs.build("test_resnet", {"det": 3, "seg": 4}, plan, task_args={"det": SMALL}, init_seed=0)
    tasks = {"det": Detection(3, **SMALL), "seg": get_task("seg", out_channels=4)}
    data = Rectangles(4, seg=True)
    history = fit(net, tasks, data, data, cfg(2), device="cpu")
    assert all(math.isfinite(v) for v in history["losses"])
    metrics = history["evals"][-1]["metrics"]
    assert set(metrics) == {"det", "seg"} and "map" in metrics["det"]


def test_boxes_move_with_an_item_resize_and_flip():
    item = {"image": torch.zeros(3, 32, 64), "det": make_boxes([[8, 4, 24, 20]], [1])}
    kinds = {"det": BOXES}
    big = resize_dense(item, (64, 128), kinds)
    assert big["det"]["boxes"].tolist() == [[16, 8, 48, 40]] and big["det"]["labels"].tolist() == [1]
    flipped = hflip_dense(big, kinds)
    assert flipped["det"]["boxes"].tolist() == [[80, 8, 112, 40]]
