"""The GPU path's logic, checked on the CPU (issue 20): mixed precision and its dtype choice, the
GradScaler's invariance for gradient-level weighting, fp32 evaluation, channels_last. CI has no
GPU; these are what a GPU run relies on that a CPU can show."""

from __future__ import annotations

import pytest
import torch

import fusionsearch as fs
from fusionsearch import train as training
from fusionsearch.errors import PlanError
from fusionsearch.tasks import get_task
from fusionsearch.train import TrainConfig, amp_dtype, evaluate, fit
from fusionsearch.weighting import GRADIENT_LEVEL, WEIGHTINGS, make_weighting

GRADIENT_METHODS = sorted(n for n, c in WEIGHTINGS.items() if c.level == GRADIENT_LEVEL)


def _net(unit: str = "nddr", backbone: str = "test_resnet", at: list[str] | None = None):
    torch.manual_seed(0)
    plan = fs.StitchPlan(at=at or ["layer1"], unit=unit)
    net = fs.build(backbone, {"seg": 3, "normal": 3}, plan, input_size=(3, 32, 32))
    return net, {"seg": get_task("seg", out_channels=3), "normal": get_task("normal")}


def _data(n: int = 4) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        {
            "image": torch.randn(3, 32, 32, generator=gen),
            "seg": torch.randint(0, 3, (32, 32), generator=gen),
            "normal": torch.nn.functional.normalize(torch.randn(3, 32, 32, generator=gen), dim=0),
        }
        for _ in range(n)
    ]


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(
        **{"steps": 3, "batch_size": 2, "base_lr": 0.01, "optimizer": "adamw", "eval_every": 3, "progress": False, **kw}
    )


def _available(name: str) -> None:
    try:
        make_weighting(name, ["seg", "normal"])
    except PlanError as e:  # an optional solver this machine lacks: named in the error
        pytest.skip(str(e))


# ---- the precision ------------------------------------------------------------------------------


@pytest.mark.parametrize(("capability", "dtype"), [((7, 5), torch.float16), ((8, 0), torch.bfloat16)])
def test_the_autocast_type_follows_the_workers_own_gpu(monkeypatch, capability, dtype):
    """sm75 (T4) and sm70 (V100) have no bf16 units: ``torch.cuda.is_bf16_supported()`` still says
    True in torch 2.14 (emulation), so it was bf16 there, slower than fp32, and never a GradScaler.
    The capability is asked of the worker's device, not of GPU 0."""
    asked = []

    def capability_of(device=None):
        asked.append(device)
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability_of)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype(torch.device("cuda:1")) == dtype
    assert asked == [torch.device("cuda:1")]
    made = []
    monkeypatch.setattr(training.torch.amp, "GradScaler", lambda device, enabled: made.append(enabled))
    training._scaler(torch.device("cuda:1"), use_amp=True)
    training._scaler(torch.device("cuda:1"), use_amp=False)
    assert made == [dtype == torch.float16, False]
    assert amp_dtype(torch.device("cpu")) == torch.bfloat16


@pytest.mark.parametrize("unit", ["nddr", "cross_stitch", "sluice"])
def test_cpu_autocast_trains_every_unit(unit):
    net, tasks = _net(unit, at=["layer1", "layer2"])
    history = fit(net, tasks, _data(), _data(2), _cfg(amp=True), device="cpu")
    assert len(history["losses"]) == 3 and all(torch.isfinite(torch.tensor(history["losses"])))


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_cpu_autocast_trains_with_every_weighting(name):
    _available(name)
    net, tasks = _net()
    weighting = {"name": name, "args": {"period": 1} if name == "dwa" else {}}
    history = fit(net, tasks, _data(), _data(2), _cfg(amp=True, weighting=weighting), device="cpu")
    assert all(torch.isfinite(torch.tensor(history["losses"]))), (name, history["losses"])


def test_evaluation_scores_fp32_predictions_even_when_training_ran_under_amp():
    """Autocast rounded the normal and depth predictions to bf16 before they were scored."""
    net, tasks = _net()
    val = _data(2)
    history = fit(net, tasks, _data(), val, _cfg(amp=True), device="cpu")
    assert history["evals"][-1]["metrics"] == evaluate(net, tasks, val, 2, "cpu")
    rounded = evaluate(net, tasks, val, 2, "cpu", amp=True)
    assert rounded["normal"]["mean"] != history["evals"][-1]["metrics"]["normal"]["mean"]


# ---- the GradScaler and gradient-level weighting ---------------------------------------------------


def _grads(name: str, scales: list[float]) -> list[torch.Tensor]:
    """The parameters' gradients after one ``backward`` per scale, each unscaled as the
    GradScaler's ``unscale_`` does; the method keeps its state (DB-MTL's running average)."""
    net, tasks = _net()
    weighting = make_weighting(name, ["seg", "normal"])
    batch = _data(2)
    x = torch.stack([b["image"] for b in batch])
    targets = {t: torch.stack([b[t] for b in batch]) for t in tasks}
    out = []
    for step, s in enumerate(scales):
        net.zero_grad(set_to_none=True)
        preds, extra = net(x, return_extra=True)
        losses = {t: tasks[t].loss(preds[t], targets[t]) for t in tasks}
        weighting.backward(losses, extra, net, step, lambda v, s=s: v * s)
        out.append(torch.cat([p.grad.flatten() / s for p in net.parameters() if p.grad is not None]))
    return out


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_gradient_level_methods_do_not_depend_on_the_loss_scale(name):
    """Under fp16 the per-task gradients are the GradScaler's scale S times the true ones. Nash-MTL
    clipped the aggregate to norm 1 in scaled space, and DB-MTL's running average mixed steps of
    different S: unscaled, the update must be the one of S = 1, whatever S does between steps."""
    _available(name)
    plain = _grads(name, [1.0, 1.0])
    scaled = _grads(name, [65536.0, 1024.0])
    for a, b in zip(plain, scaled):
        torch.testing.assert_close(b, a, rtol=2e-3, atol=1e-6)


# ---- memory layout ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("backbone", "at"), [("test_resnet", ["layer1"]), ("test_vit", None)])
def test_channels_last_trains_the_same_net(backbone, at):
    """``channels_last`` (on by default for CUDA) changes the memory layout, not the function: on
    conv and token models alike the predictions and the first training loss match the default
    layout's (later steps drift apart at rounding level, which AdamW's first steps magnify)."""
    if at is None:
        at = [fs.trace(backbone, (3, 32, 32)).boundaries[0].name]
    runs, preds = [], []
    x = torch.stack([b["image"] for b in _data(2)])
    for layout in (False, True):
        net, tasks = _net(backbone=backbone, at=at)
        net.eval()
        with torch.no_grad():
            if layout:
                net.to(memory_format=torch.channels_last)
            preds.append(net(x.contiguous(memory_format=torch.channels_last) if layout else x))
        runs.append(fit(net, tasks, _data(), _data(2), _cfg(steps=1, channels_last=layout), device="cpu")["losses"])
    for t in preds[0]:
        torch.testing.assert_close(preds[1][t], preds[0][t], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(runs[1]), torch.tensor(runs[0]), rtol=1e-5, atol=1e-6)
