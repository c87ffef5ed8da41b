"""Task losses and metrics against hand-computed values on tiny arrays."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fusionsearch as fs
from fusionsearch.tasks.delta import delta_m
from fusionsearch.tasks.task import TASKS, get_task


def test_registry_lists_the_papers_tasks():
    assert {"seg", "normal", "depth", "cls", "age", "gender"} <= set(TASKS)
    with pytest.raises(fs.PlanError, match="unknown task 'segm'"):
        get_task("segm")


def test_segmentation_confusion_matrix_metrics():
    task = get_task("seg", out_channels=3)
    target = torch.tensor([[[0, 0, 1, 2, 255]]])
    logits = F.one_hot(torch.tensor([[[0, 1, 1, 1, 0]]]), 3).permute(0, 3, 1, 2).float()
    task.update(logits[:, :, :, :2], target[:, :, :2])  # split over two batches
    task.update(logits[:, :, :, 2:], target[:, :, 2:])
    m = task.compute()
    # class 0: tp 1, union 2; class 1: tp 1, union 3 (predicted 3 times); class 2: tp 0, union 1
    assert m["miou"] == pytest.approx(100 * (1 / 2 + 1 / 3 + 0) / 3)
    assert m["pixel_acc"] == pytest.approx(100 * 2 / 4)  # the ignored pixel does not count
    loss = task.loss(logits, target)
    expected = F.cross_entropy(logits[..., :4], target[..., :4])
    assert loss.item() == pytest.approx(expected.item())


def test_normal_angles_and_loss():
    task = get_task("normal")
    target = torch.zeros(1, 3, 1, 4)
    target[0, 2] = 1.0  # all pointing at the camera ...
    target[0, :, 0, 3] = 0.0  # ... except one unlabelled pixel
    pred = torch.zeros(1, 3, 1, 4)
    for i, deg in enumerate([0.0, 20.0, 60.0, 90.0]):
        pred[0, 0, 0, i] = math.sin(math.radians(deg)) * 5  # unnormalised on purpose
        pred[0, 2, 0, i] = math.cos(math.radians(deg)) * 5
    task.update(pred, target)
    m = task.compute()
    assert m["mean"] == pytest.approx(80 / 3, abs=1e-3)
    assert m["median"] == pytest.approx(20.0, abs=0.01)
    assert m["within_11.25"] == pytest.approx(100 / 3)
    assert m["within_22.5"] == pytest.approx(200 / 3)
    assert m["within_30"] == pytest.approx(200 / 3)
    # 1 - cos on valid pixels, the official code's tf.losses.cosine_distance (not 2 - 2 cos)
    expected = sum(1 - math.cos(math.radians(d)) for d in (0, 20, 60)) / 3
    assert task.loss(pred, target).item() == pytest.approx(expected, rel=1e-5)


def test_depth_metrics():
    task = get_task("depth")
    pred = torch.tensor([[[[1.0, 2.0, 5.0]]]])
    target = torch.tensor([[[[2.0, 2.0, 0.0]]]])  # the 0 is invalid
    task.update(pred, target)
    m = task.compute()
    assert m["abs_rel"] == pytest.approx(0.25)
    assert m["rmse"] == pytest.approx(math.sqrt(0.5))
    assert task.loss(pred, target).item() == pytest.approx(0.5)


def test_age_expected_value_and_errors():
    task = get_task("age")
    logits = torch.full((2, 100), -1e4)
    logits[0, 30] = logits[0, 40] = 0.0  # p = 0.5 / 0.5 -> expected age 35
    logits[1, 20] = 0.0  # expected age 20
    task.update(logits, torch.tensor([37.0, 24.0]))
    m = task.compute()
    assert task.estimate(logits).tolist() == pytest.approx([35.0, 20.0])
    assert m["mae"] == pytest.approx(3.0)
    assert m["median_ae"] == pytest.approx(2.0)  # torch's median of an even count is the lower middle


def test_gender_accuracy():
    task = get_task("gender")
    task.update(torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
    assert task.compute()["accuracy"] == pytest.approx(200 / 3)


def test_delta_m_signs_follow_directions():
    directions = {"seg": {"miou": True}, "normal": {"mean": False}}
    single = {"seg": {"miou": 40.0}, "normal": {"mean": 20.0}}
    multi = {"seg": {"miou": 44.0}, "normal": {"mean": 18.0}}  # both better by 10%
    assert delta_m(multi, single, directions) == pytest.approx(10.0)
    assert delta_m(single, single, directions) == 0.0


def test_delta_m_conventions_against_hand_computed_values():
    """seg gains +10% (miou) and +20% (pixel_acc); normal gains +10% (mean), -10% (median) and
    +40% (within_11.25, a rare bin with big relative swings) and 0 on the two other bins."""
    from fusionsearch.tasks.delta import DeltaM

    directions = {
        "seg": {"miou": True, "pixel_acc": True},
        "normal": {"mean": False, "median": False, "within_11.25": True, "within_22.5": True, "within_30": True},
    }
    single = {
        "seg": {"miou": 40.0, "pixel_acc": 50.0},
        "normal": {"mean": 20.0, "median": 10.0, "within_11.25": 5.0, "within_22.5": 30.0, "within_30": 40.0},
    }
    multi = {
        "seg": {"miou": 44.0, "pixel_acc": 60.0},
        "normal": {"mean": 18.0, "median": 11.0, "within_11.25": 7.0, "within_22.5": 30.0, "within_30": 40.0},
    }
    seg, normal = (10 + 20) / 2, (10 - 10 + 40 + 0 + 0) / 5
    # default: each task counts once (LibMTL's Delta_p)
    assert delta_m(multi, single, directions) == pytest.approx((seg + normal) / 2) == pytest.approx(11.5)
    assert DeltaM()(multi, single, directions) == pytest.approx(11.5)
    # flat mean over the 7 metrics: normals carry 5/7 of the weight
    flat = (10 + 20 + 10 - 10 + 40 + 0 + 0) / 7
    assert delta_m(multi, single, directions, average="metrics") == pytest.approx(flat) == pytest.approx(10.0)
    # one primary metric per task (mIoU, mean angle): (+10 + +10) / 2, under either average
    for average in ("tasks", "metrics"):
        assert DeltaM(average, "primary")(multi, single, directions) == pytest.approx(10.0)
    assert "LibMTL" in DeltaM().describe() and "flat" in DeltaM("metrics").describe()
    assert "primary" in DeltaM(metrics="primary").describe()
    with pytest.raises(fs.PlanError, match="average must be 'tasks' or 'metrics'"):
        DeltaM("task")
    with pytest.raises(fs.PlanError, match="unknown delta_m field"):
        DeltaM.from_dict({"averge": "tasks"})


def test_every_registered_task_declares_a_primary_metric():
    for name, cls in TASKS.items():
        assert cls.primary in cls.metrics, name


def test_metrics_match_torchmetrics_where_available():
    tm = pytest.importorskip("torchmetrics")
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 8, 8)
    target = torch.randint(0, 5, (4, 8, 8))
    task = get_task("seg", out_channels=5)
    task.update(logits, target)
    ours = task.compute()
    jac = tm.classification.MulticlassJaccardIndex(num_classes=5, average="macro")
    acc = tm.classification.MulticlassAccuracy(num_classes=5, average="micro")
    assert ours["miou"] == pytest.approx(100 * jac(logits, target).item(), rel=1e-5)
    assert ours["pixel_acc"] == pytest.approx(100 * acc(logits, target).item(), rel=1e-5)


def test_heads_give_the_right_shapes():
    x = torch.randn(2, 16, 4, 4)
    assert get_task("seg", out_channels=7).head(16)(x, (32, 32)).shape == (2, 7, 32, 32)
    assert get_task("normal").head(16)(x, (32, 32)).shape == (2, 3, 32, 32)
    assert get_task("age").head(16)(x, (32, 32)).shape == (2, 100)
