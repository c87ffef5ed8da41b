"""Training on the built-in data: loss falls, metrics beat a constant predictor, resume is exact."""

from __future__ import annotations

import math

import pytest
import torch

import fusionsearch as fs
from fusionsearch.data import SyntheticScenes
from fusionsearch.tasks.task import get_task
from fusionsearch.train.config import TrainConfig
from fusionsearch.train.trainer import NonFiniteLossError, evaluate, fit, lr_factor

SIZE = 64


def _net(seed: int = 0) -> fs.StitchedNet:
    torch.manual_seed(seed)
    plan = fs.StitchPlan(at=["layer1", "layer2", "layer3"], unit="nddr")
    return fs.build("test_resnet", {"seg": 6, "normal": 3}, plan, input_size=(3, SIZE, SIZE), output_stride=8)


def _tasks():
    return {"seg": get_task("seg", out_channels=6, rates=(1, 2)), "normal": get_task("normal", loss_weight=4.0)}


def _constant_metrics(tasks, data):
    """Metrics of the best constant predictor: the majority class and the mean normal."""
    seg = torch.stack([data[i]["seg"] for i in range(len(data))])
    normal = torch.stack([data[i]["normal"] for i in range(len(data))])
    counts = torch.bincount(seg.flatten(), minlength=6)
    logits = torch.zeros(len(data), 6, SIZE, SIZE)
    logits[:, counts.argmax()] = 1.0
    mean = normal.mean((0, 2, 3))
    tasks["seg"].reset()
    tasks["seg"].update(logits, seg)
    tasks["normal"].reset()
    tasks["normal"].update(mean.view(1, 3, 1, 1).expand_as(normal).clone(), normal)
    return {"seg": tasks["seg"].compute(), "normal": tasks["normal"].compute()}


def test_poly_schedule_with_warmup():
    cfg = TrainConfig(steps=100, warmup_steps=10, poly_power=0.9)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.5**0.9)
    assert lr_factor(100, cfg) == 0.0


def test_training_learns_both_tasks():
    train = SyntheticScenes("train", length=64, size=SIZE, seed=0)
    val = SyntheticScenes("val", length=16, size=SIZE, seed=0)
    tasks = _tasks()
    cfg = TrainConfig(
        steps=120, batch_size=8, base_lr=2e-3, optimizer="adamw", eval_every=60, progress=False, warmup_steps=5
    )
    seen = []
    history = fit(_net(), tasks, train, val, cfg, device="cpu", callback=lambda s, m: seen.append((s, m)))
    losses = history["losses"]
    assert len(losses) == 120 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    assert [s for s, _ in seen] == [60, 120]
    metrics = seen[-1][1]
    const = _constant_metrics(_tasks(), val)
    assert metrics["seg"]["miou"] > const["seg"]["miou"] + 5, (metrics["seg"], const["seg"])
    assert metrics["normal"]["within_22.5"] > const["normal"]["within_22.5"] + 5, (metrics["normal"], const["normal"])


def test_resume_continues_identically(tmp_path):
    train = SyntheticScenes("train", length=12, size=SIZE, seed=1)
    cfg = TrainConfig(steps=6, batch_size=4, base_lr=0.01, eval_every=3, progress=False)
    straight = _net()
    fit(straight, _tasks(), train, None, cfg, device="cpu")
    half = _net()
    fit(half, _tasks(), train, None, cfg, device="cpu", checkpoint=tmp_path / "ck.pt", until=4)
    assert torch.load(tmp_path / "ck.pt", weights_only=True)["step"] == 4
    # a fresh process rebuilds the net (other weights) and resumes from the step-4 checkpoint
    resumed = _net(seed=123)
    history = fit(resumed, _tasks(), train, None, cfg, device="cpu", checkpoint=tmp_path / "ck.pt")
    assert history["step"] == 6 and len(history["losses"]) == 6
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_nan_loss_stops_with_a_clear_error():
    train = SyntheticScenes("train", length=4, size=SIZE)
    net = _net()
    with torch.no_grad():
        next(iter(net.fusion_units().values())).weights[0].fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 0"):
        fit(net, _tasks(), train, None, TrainConfig(steps=2, batch_size=2, progress=False), device="cpu")


def test_evaluate_accumulates_over_the_whole_set():
    val = SyntheticScenes("val", length=5, size=SIZE)
    tasks = _tasks()
    metrics = evaluate(_net(), tasks, val, batch_size=2, device="cpu")
    total = tasks["seg"].confusion.sum().item()
    assert total == 5 * SIZE * SIZE  # every pixel of every image, odd last batch included
    assert set(metrics) == {"seg", "normal"}
