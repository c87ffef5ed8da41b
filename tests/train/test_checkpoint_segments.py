"""``train.checkpoint: segments``: the same step as without it (loss, every gradient, BatchNorm
statistics, eval output), only recomputed; the recipe field is checked."""

from __future__ import annotations

import copy

import pytest
import torch

import fusionsearch as fs
from fusionsearch.data import SyntheticScenes
from fusionsearch.experiment.recipe import RecipeError, load_recipe
from fusionsearch.tasks.task import get_task
from fusionsearch.train.config import TrainConfig
from fusionsearch.train.trainer import fit

SIZE = 64


POINTS = {  # (shared prefix, fusion points)
    "test_resnet": ("layer1", ["layer2", "layer3"]),
    "test_convnext": ("stages.0", ["stages.1", "stages.2"]),
    "test_vit": ("blocks.0", ["blocks.2", "blocks.4"]),  # LayerNorm only; tokens, not maps
}


def _net(backbone: str, shared: bool) -> fs.StitchedNet:
    torch.manual_seed(0)
    prefix, at = POINTS[backbone]
    plan = fs.StitchPlan(at=at, unit="nddr", shared_prefix=prefix if shared else None)
    return fs.build(backbone, {"a": 3, "b": 2}, plan, input_size=_size(backbone))


def _size(backbone: str) -> tuple[int, int, int]:
    return (3, 160, 160) if backbone == "test_vit" else (3, SIZE, SIZE)


def _step(net: fs.StitchedNet, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    net.train()
    preds, extra = net(x, return_extra=True)
    loss = sum(p.square().mean() for p in preds.values()) + extra
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backbone", sorted(POINTS))
@pytest.mark.parametrize("shared", [False, True])
def test_checkpointed_step_equals_the_plain_one(backbone, shared):
    plain = _net(backbone, shared)
    checked = copy.deepcopy(plain)
    checked.checkpoint_segments = True
    x = torch.randn(2, *_size(backbone), generator=torch.Generator().manual_seed(1))
    loss_a, grads_a = _step(plain, x)
    loss_b, grads_b = _step(checked, x)
    torch.testing.assert_close(loss_b, loss_a)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == len(list(plain.parameters()))
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, msg=name)
    buffers = dict(checked.named_buffers())
    if backbone == "test_resnet":  # BatchNorm inside the recomputed segments (ConvNeXt, ViT: LayerNorm)
        assert any(n.startswith(("columns.", "shared.")) and n.endswith("running_mean") for n in buffers)
    for name, b in plain.named_buffers():  # running statistics updated once, not again on recompute
        assert torch.equal(buffers[name], b), name
    plain.eval(), checked.eval()
    with torch.no_grad():
        out_a, out_b = plain(x), checked(x)
    assert all(torch.equal(out_a[t], out_b[t]) for t in out_a)


def test_segments_are_recomputed_only_in_training_with_gradients(monkeypatch):
    net = _net("test_resnet", shared=True)
    net.checkpoint_segments = True
    calls = []
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(fs.nets.net, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        net.train()(x)
    net.eval()(x)
    assert calls == []
    net.train()(x)
    assert len(calls) == len(net.shared) + sum(len(c) for c in net.columns)


def test_fit_with_checkpointing_trains_as_without():
    tasks = {"seg": get_task("seg", out_channels=6, rates=(1, 2)), "normal": get_task("normal")}
    train = SyntheticScenes("train", 8, size=SIZE)
    histories = []
    for mode in ("none", "segments"):
        torch.manual_seed(0)
        plan = fs.StitchPlan(at=["layer1", "layer2", "layer3"], unit="nddr")
        net = fs.build("test_resnet", {"seg": 6, "normal": 3}, plan, input_size=(3, SIZE, SIZE))
        cfg = TrainConfig(steps=3, batch_size=2, eval_every=3, progress=False, checkpoint=mode)
        histories.append((fit(net, tasks, train, None, cfg, device="cpu")["losses"], net.state_dict()))
        assert net.checkpoint_segments == (mode == "segments")
    (losses_a, state_a), (losses_b, state_b) = histories
    assert losses_b == pytest.approx(losses_a, rel=1e-5)
    for name, v in state_a.items():
        torch.testing.assert_close(state_b[name], v, msg=name)


def test_the_recipe_field_is_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {checkpoint: segmets}\n")
    with pytest.raises(RecipeError, match=r"train\.checkpoint") as err:
        _ = load_recipe(bad).training
    assert "\n" not in str(err.value)
    bad.write_text("train: {checkpoint: segments}\n")
    assert load_recipe(bad).training.checkpoint == "segments"
    with pytest.raises(fs.FusionSearchError, match="train checkpoint must be one of none, segments"):
        TrainConfig(checkpoint="all")  # type: ignore[arg-type]
