"""The papers' official code, pinned: each default checked against numbers computed by hand from
the official definitions (ethanygao/NDDR-CNN, TF 1.4 slim; its PyTorch port; LibMTL)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fusionsearch as fs
from fusionsearch.nets.fusion import NDDR
from fusionsearch.nets.fusion.shortcut import ShortcutHead
from fusionsearch.tasks.resize import resize_bilinear
from fusionsearch.tasks.task import get_task


def test_nddr_batchnorm_is_the_official_codes():
    """slim.batch_norm(decay=0.95) with slim's eps 1e-3: after one training batch the running mean
    moves 5% of the way (torch momentum 0.05), and eval divides by sqrt(var + 1e-3)."""
    unit = NDDR([2, 2], init=(1.0, 0.0))
    for bn in unit.norms:
        assert (bn.momentum, bn.eps) == (0.05, 1e-3)
    x = [torch.full((4, 2, 3, 3), 2.0), torch.zeros(4, 2, 3, 3)]
    x[0][:, :, 0, 0] = 6.0  # per-channel batch mean 2 + 4/9
    unit.train()
    unit(x)
    mean = 2 + 4 / 9
    assert unit.norms[0].running_mean[0].item() == pytest.approx(0.05 * mean, rel=1e-6)
    unit.eval()
    y = unit([torch.ones(1, 2, 1, 1), torch.zeros(1, 2, 1, 1)])[0][0]
    rm, rv = unit.norms[0].running_mean[0].item(), unit.norms[0].running_var[0].item()
    assert y[0, 0, 0, 0].item() == pytest.approx(max(0.0, (1 - rm) / math.sqrt(rv + 1e-3)), rel=1e-5)


def test_nddr_weight_decay_follows_the_recipe_and_bn_is_not_decayed():
    """The official code decays every 'weights' variable by 0.5 x 5e-4 x l2_loss (2.5e-4 in torch's
    terms), NDDR's 1x1 conv included, and no BatchNorm variable; lr x100 (--nddr-mult)."""
    net = fs.build("test_resnet", {"a": 3, "b": 3}, fs.StitchPlan(at=["layer1"]), input_size=(3, 32, 32))
    groups = {g["name"]: g for g in net.param_groups(base_lr=1e-3, weight_decay=2.5e-4)}
    assert groups["fusion:layer1:nddr"]["weight_decay"] == 2.5e-4
    assert groups["fusion:layer1:nddr"]["lr"] == pytest.approx(0.1)
    assert groups["fusion:layer1:nddr_norm"]["weight_decay"] == 0.0
    own = fs.build(
        "test_resnet",
        {"a": 3, "b": 3},
        fs.StitchPlan(at=["layer1"], unit_args={"weight_decay": 1e-5}),
        input_size=(3, 32, 32),
    )
    assert {g["name"]: g for g in own.param_groups(1e-3, 2.5e-4)}["fusion:layer1:nddr"]["weight_decay"] == 1e-5


def test_tf_legacy_resize_is_tf_1x_resize_bilinear():
    """TF 1.x resize_bilinear(align_corners=False): source = dest x in/out, no half-pixel offset,
    the last source row repeated: [a, b] -> [a, (a+b)/2, b, b]; the port's align_corners=True and
    torch's half-pixel give other numbers."""
    x = torch.tensor([[1.0, 3.0], [5.0, 7.0]])[None, None]
    tf = resize_bilinear(x, (4, 4), "tf_legacy")[0, 0]
    row = lambda a, b: [a, (a + b) / 2, b, b]
    expected = torch.tensor([row(1, 3), row(3, 5), row(5, 7), row(5, 7)])
    assert torch.equal(tf, expected)
    corners = resize_bilinear(x, (4, 4), "align_corners")[0, 0]
    assert corners[0].tolist() == pytest.approx([1, 1 + 2 / 3, 1 + 4 / 3, 3])
    half = resize_bilinear(x, (4, 4), "half_pixel")[0, 0]
    assert half[0].tolist() == pytest.approx([1, 1.5, 2.5, 3])
    # 3 -> 5: source 0, 0.6, 1.2, 1.8, 2.4
    y = torch.tensor([0.0, 10.0, 20.0])[None, None, None]
    assert resize_bilinear(y, (1, 5), "tf_legacy")[0, 0, 0].tolist() == pytest.approx([0, 6, 12, 18, 20])


def test_the_shortcut_is_the_official_conv_bn_relu():
    """One forward on fixed weights against a hand-written conv -> BN -> ReLU over the TF-resized,
    concatenated fusion outputs."""
    torch.manual_seed(0)
    head = ShortcutHead([2, 3], 4, "NCHW").eval()
    with torch.no_grad():
        head.norm.running_mean.uniform_(-0.5, 0.5)
        head.norm.running_var.uniform_(0.5, 2.0)
        head.norm.weight.uniform_(0.5, 1.5)
        head.norm.bias.uniform_(-0.2, 0.2)
    low, last = torch.randn(2, 2, 2, 2), torch.randn(2, 3, 4, 4)
    out = head([low, last])
    up = resize_bilinear(low, (4, 4), "tf_legacy")
    z = F.conv2d(torch.cat([up, last], 1), head.proj.weight)
    bn = head.norm
    z = (z - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + 1e-3)
    z = z * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    torch.testing.assert_close(out, torch.relu(z))
    assert (bn.momentum, bn.eps) == (0.05, 1e-3) and head.proj.bias is None
    # Xavier: uniform in +-sqrt(6 / (fan_in + fan_out))
    assert head.proj.weight.abs().max().item() <= math.sqrt(6 / (5 + 4))


def test_the_shortcut_trains_in_the_fusion_group_and_its_identity_start_is_an_option():
    plan = fs.StitchPlan(at=["layer1", "layer2"], shortcut=True)
    net = fs.build("test_resnet", {"a": 3, "b": 3}, plan, input_size=(3, 32, 32))
    groups = {g["name"]: g for g in net.param_groups(base_lr=1e-3, weight_decay=2.5e-4)}
    assert groups["head_input:a:shortcut"]["lr"] == pytest.approx(0.1)  # x100, as NDDR
    assert groups["head_input:a:shortcut"]["weight_decay"] == 2.5e-4
    assert groups["head_input:a:shortcut_norm"]["weight_decay"] == 0.0
    same = fs.build(
        "test_resnet",
        {"a": 3, "b": 3},
        fs.StitchPlan(at=["layer1", "layer2"], unit_args={"init": (1.0, 0.0)}, shortcut=True, shortcut_init="identity"),
        input_size=(3, 32, 32),
    ).eval()
    plain = fs.build(
        "test_resnet",
        {"a": 3, "b": 3},
        fs.StitchPlan(at=["layer1", "layer2"], unit_args={"init": (1.0, 0.0)}),
        input_size=(3, 32, 32),
    ).eval()
    plain.load_state_dict({k: v for k, v in same.state_dict().items() if not k.startswith("head_inputs")})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(same.head_features(x)[0][0], plain.head_features(x)[0][0])


def test_normal_loss_is_one_minus_cos():
    task = get_task("normal")
    target = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
    pred = torch.tensor([math.sin(0.3), 0.0, math.cos(0.3)]).view(1, 3, 1, 1) * 7
    assert task.loss(pred, target).item() == pytest.approx(1 - math.cos(0.3), rel=1e-6)


def test_normal_png_space_scores_like_the_nddr_codes():
    """Both NDDR codes L2-normalise the raw 0..255 label (never decoding it) and the prediction:
    the angle between round((n + 1) x 127.5) and (n_hat + 1) x 127.5."""
    n = torch.tensor([0.0, 0.0, 1.0])
    p = torch.tensor([math.sin(math.radians(40)), 0.0, math.cos(math.radians(40))])
    unit, png = get_task("normal"), get_task("normal", score_space="png")
    for t in (unit, png):
        t.reset()
        t.update(p.view(1, 3, 1, 1), n.view(1, 3, 1, 1))
    assert unit.compute()["mean"] == pytest.approx(40.0, abs=1e-3)
    a, b = torch.round((n + 1) * 127.5), (p + 1) * 127.5
    by_hand = math.degrees(math.acos((a @ b / (a.norm() * b.norm())).item()))
    assert png.compute()["mean"] == pytest.approx(by_hand, abs=1e-3)
    assert by_hand < 25  # the same prediction scores far smaller there


def test_depth_reports_libmtl_abs_err_pooled_over_pixels():
    task = get_task("depth")
    task.reset()
    task.update(torch.tensor([[1.0, 2.0]]).view(1, 1, 1, 2), torch.tensor([[2.0, 0.0]]).view(1, 1, 1, 2))
    task.update(torch.tensor([[3.0, 3.0]]).view(1, 1, 1, 2), torch.tensor([[4.0, 1.0]]).view(1, 1, 1, 2))
    m = task.compute()  # valid pixels: errors 1, 1, 2 over depths 2, 4, 1 (the 0 is unlabelled)
    assert m["abs_err"] == pytest.approx(4 / 3)
    assert m["abs_rel"] == pytest.approx((1 / 2 + 1 / 4 + 2 / 1) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(6 / 3))


@pytest.mark.parametrize("off_diagonal, other", [("split", 0.05), ("each", 0.1)])
def test_cross_stitch_init_for_three_tasks(off_diagonal, other):
    """K = 3: beta spread over the other tasks (rows sum to alpha + beta), or beta to each (the
    survey code's models/cross_stitch.py)."""
    unit = fs.nets.fusion.CrossStitch([4, 4, 4], init=(0.9, 0.1), off_diagonal=off_diagonal)
    expected = torch.full((3, 3), other)
    expected.fill_diagonal_(0.9)
    torch.testing.assert_close(unit.mixing_weights(), expected)


def test_a_net_saved_before_the_official_defaults_loads_as_it_was(tmp_path):
    """Format 1 files hold no shortcut_init/resize and NDDR BatchNorm was torch's (0.1, 1e-5):
    they load with those, so the saved net computes what it computed."""
    old = fs.StitchPlan(
        at=["layer1", "layer2"],
        shortcut=True,
        shortcut_init="identity",
        shortcut_resize="half_pixel",
        unit_args={"bn_momentum": 0.1, "bn_eps": 1e-5},
    )
    net = fs.build("test_resnet", {"a": 3, "b": 3}, old, input_size=(3, 32, 32)).eval()
    path = tmp_path / "v1.pt"
    fs.save(net, path)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 1
    for k in ("shortcut_init", "shortcut_resize"):
        payload["plan"].pop(k)
    payload["plan"]["unit_args"] = {}
    torch.save(payload, path)
    loaded = fs.load(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["a"], net(x)["a"])
    assert loaded.units["0"].norms[0].eps == 1e-5
