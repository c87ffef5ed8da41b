"""Fusion units and stitched networks: identity, equivalences, gradients, groups, save/load, errors."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import fusionsearch as fs
from fusionsearch.nets.fusion import FUSION_UNITS, NDDR, CrossStitch, Sluice
from fusionsearch.nets.heads import SimpleHead

IDENTITY = {name: {"init": cls.identity_init} for name, cls in FUSION_UNITS.items()}
UNITS = sorted(FUSION_UNITS)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: timm.create_model(name).eval() for name in ("test_resnet", "test_convnext", "test_vit")}


def _x(model, batch=2):
    return torch.randn(batch, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("backbone", ["test_resnet", "test_convnext", "test_vit"])
@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("k", [2, 3])
def test_identity_init_reproduces_single_task_features(models, backbone, unit, k):
    model = models[backbone]
    g = fs.trace(model)
    plan = fs.StitchPlan(at=[b.name for b in g.boundaries], unit=unit, unit_args=IDENTITY[unit])
    net = fs.build(model, {f"t{i}": 3 for i in range(k)}, plan).eval()
    x = _x(model)
    with torch.no_grad():
        ref = model.forward_features(x)
        feats = net.forward_features(x)
    assert len(feats) == k
    for f in feats:
        if unit == "nddr":  # eval BatchNorm divides by sqrt(1 + eps) once per fusion point
            eps = fs.nets.fusion.unit.BN_EPS * len(g.boundaries)
            torch.testing.assert_close(f, ref, rtol=eps, atol=eps * ref.abs().max().item())
        else:
            assert torch.equal(f, ref)


def test_relu_is_used_only_on_nonnegative_features(models):
    net = fs.build(models["test_resnet"], {"a": 1, "b": 1}, fs.StitchPlan(at=["layer1"]))
    assert isinstance(net.fusion_units()["layer1"].acts[0], nn.ReLU)
    net = fs.build(models["test_convnext"], {"a": 1, "b": 1}, fs.StitchPlan(at=["stages.1"]))
    assert isinstance(net.fusion_units()["stages.1"].acts[0], nn.Identity)


@pytest.mark.parametrize("layout,shape", [("NCHW", (2, 6, 5, 4)), ("NLC", (2, 7, 6)), ("NHWC", (2, 5, 4, 6))])
@pytest.mark.parametrize("per", ["channel", "layer"])
def test_cross_stitch_is_nddr_with_diagonal_blocks(layout, shape, per):
    torch.manual_seed(0)
    k = 3
    cs = CrossStitch([6] * k, layout, per=per)
    with torch.no_grad():
        cs.alpha.copy_(torch.randn_like(cs.alpha))
    nddr = NDDR([6] * k, layout, norm="none", act="none")
    with torch.no_grad():
        for i, w in enumerate(nddr.weights):
            w.zero_()
            for j in range(k):
                w[:, j * 6 : (j + 1) * 6] = torch.diag(cs.alpha[i, j].expand(6))
    feats = [torch.randn(shape) for _ in range(k)]
    for a, b in zip(cs(feats)[0], nddr(feats)[0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_nddr_default_init_is_eq3_and_spreads_beta():
    unit = NDDR([4, 4, 4], init=(0.9, 0.1))
    w = unit.weights[1]
    assert torch.allclose(w[:, 4:8], 0.9 * torch.eye(4))
    assert torch.allclose(w[:, 0:4], 0.05 * torch.eye(4)) and torch.allclose(w[:, 8:12], 0.05 * torch.eye(4))
    assert torch.allclose(unit.mixing_weights().diagonal(), torch.full((3,), 0.9))
    xavier = NDDR([4, 4], init="xavier")
    assert xavier.weights[0].abs().sum() > 0 and not torch.allclose(xavier.weights[0][:, :4], 0.9 * torch.eye(4))


def test_nddr_handles_different_channel_counts():
    unit = NDDR([4, 8], "NCHW", init=(1.0, 0.0), norm="none", act="none")
    a, b = torch.randn(2, 4, 3, 3), torch.randn(2, 8, 3, 3)
    out, extra = unit([a, b])
    assert extra is None and out[0].shape == a.shape and out[1].shape == b.shape
    assert torch.equal(out[0], a) and torch.equal(out[1], b)
    with pytest.raises(fs.PlanError, match="equal channel counts"):
        CrossStitch([4, 8])


def test_sluice_orthogonality_penalty():
    unit = Sluice([4, 4], "NCHW", subspaces=2, orthogonality=0.1)
    f = torch.randn(2, 4, 3, 3)
    _, extra = unit([f, f])
    g1, g2 = (p.movedim(1, -1).reshape(-1, 2) for p in unit([f, f])[0][0].chunk(2, 1))
    expected = 0.1 * 2 * ((g1.T @ g2) / g1.shape[0]).pow(2).sum()  # both tasks' outputs are equal here
    torch.testing.assert_close(extra, expected)
    with pytest.raises(fs.PlanError, match="subspaces"):
        Sluice([5, 5], subspaces=2)


def test_gradients_reach_every_column_and_unit(models):
    plan = fs.StitchPlan(at=["layer1", "layer2", "layer3", "layer4"], shortcut=True)
    model = timm.create_model("test_resnet")
    for m in model.modules():  # timm zero-inits each block's last BN gamma, which stops branch gradients
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
    net = fs.build(model, {"seg": 5, "normal": 3}, plan).train()
    out = net(_x(models["test_resnet"]))
    (out["seg"].mean() + out["normal"].mean()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0 or "num_batches" in name, name


def test_param_groups_give_fusion_its_multiplier_and_decay(models):
    plan = fs.StitchPlan(at=["layer1", "layer3"], unit_args={"lr_mult": 200.0, "weight_decay": 5e-4})
    net = fs.build(models["test_resnet"], {"seg": 5, "normal": 3}, plan)
    groups = net.param_groups(base_lr=0.01, weight_decay=1e-4)
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == 0.01
    assert by_name["fusion:layer1:nddr"]["lr"] == pytest.approx(2.0)
    assert by_name["fusion:layer1:nddr"]["weight_decay"] == 5e-4
    assert by_name["fusion:layer1:nddr_norm"]["weight_decay"] == 0.0
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in net.parameters() if p.requires_grad}
    torch.optim.SGD(groups, lr=0.01, momentum=0.9)  # accepted as is


def test_k_single_task_networks_and_shared_baseline(models):
    model = models["test_resnet"]
    single = fs.build(model, {"seg": 5, "normal": 3}, fs.StitchPlan(at=[]))
    assert len(single.units) == 0 and len(single.shared) == 0
    assert single.describe()["params"]["backbone"] == 2 * single.meta.column_params
    shared = fs.build(model, {"seg": 5, "normal": 3}, fs.StitchPlan(shared_prefix="layer4"))
    assert shared.describe()["params"]["backbone"] == shared.meta.column_params
    split = fs.build(model, {"seg": 5, "normal": 3}, fs.StitchPlan(at=["layer3", "layer4"], shared_prefix="layer2"))
    x = _x(model)
    with torch.no_grad():
        ref = model.forward_features(x)
        for net in (single, shared):
            for f in net.eval().forward_features(x):
                assert torch.equal(f, ref)
    assert set(split(x)) == {"seg", "normal"}


def test_nddr_overhead_matches_formula_on_vgg16_pools():
    g = fs.trace("vgg16", (3, 32, 32))
    pools = [b.name for b in g.stage_starts]
    net = fs.build("vgg16", {"seg": 40, "normal": 3}, fs.StitchPlan(at=pools), input_size=(3, 32, 32))
    channels = [64, 128, 256, 512, 512]
    conv = sum(2 * 2 * c * c for c in channels)  # sum over tasks i of K * C_i^2, K = 2
    bn = sum(2 * 2 * c for c in channels)
    assert [b.channels for b in g.stage_starts] == channels
    assert net.describe()["params"]["fusion"] == conv + bn
    assert conv == 2_441_216  # the paper's 1.2M is one task's share: 2 * sum C^2 = 1,220,608


def test_save_and_load_round_trip(tmp_path, models):
    plan = fs.StitchPlan(at=["layer1", "layer3"], unit="cross_stitch", per_point={"layer3": {"unit": "nddr"}})
    net = fs.build("test_resnet", {"seg": 5, "normal": 3}, plan).eval()
    assert type(net.fusion_units()["layer1"]).__name__ == "CrossStitch"
    assert type(net.fusion_units()["layer3"]).__name__ == "NDDR"
    fs.save(net, tmp_path / "net.pt")
    net2 = fs.load(tmp_path / "net.pt")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = net(x), net2(x)
    assert all(torch.equal(a[t], b[t]) for t in a)
    assert net2.plan == plan
    # built from a module: load needs it again
    net3 = fs.build(models["test_resnet"], {"seg": 5}, fs.StitchPlan())
    fs.save(net3, tmp_path / "m.pt")
    with pytest.raises(fs.PlanError, match="backbone="):
        fs.load(tmp_path / "m.pt")
    fs.load(tmp_path / "m.pt", backbone=models["test_resnet"])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(fs.PlanError, match="bad.pt' cannot be read"):
        fs.load(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(fs.PlanError, match="not a fusionsearch stitched network"):
        fs.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        fs.load(tmp_path / "nope.pt")


def test_columns_from_single_task_checkpoints(tmp_path):
    torch.manual_seed(1)
    a, b = timm.create_model("test_resnet"), timm.create_model("test_resnet")
    torch.save(a.state_dict(), tmp_path / "a.pth")
    torch.save({"state_dict": b.state_dict()}, tmp_path / "b.pth")
    net = fs.build(
        "test_resnet",
        {"seg": 5, "normal": 3},
        fs.StitchPlan(at=["layer2"], unit="cross_stitch", unit_args=IDENTITY["cross_stitch"]),
        column_weights=[tmp_path / "a.pth", tmp_path / "b.pth"],
    ).eval()
    x = _x(a.eval())
    b.eval()
    with torch.no_grad():
        fa, fb = net.forward_features(x)
        assert torch.equal(fa, a.forward_features(x)) and torch.equal(fb, b.forward_features(x))


def test_columns_of_different_backbones():
    net = fs.build(["test_resnet", "test_resnet"], {"a": 2, "b": 2}, fs.StitchPlan(at=["layer2"]))
    assert len(net(torch.randn(1, 3, 64, 64))) == 2
    with pytest.raises(fs.PlanError, match="incompatible resolutions"):
        fs.build(["test_resnet", "test_vit"], {"a": 2, "b": 2}, fs.StitchPlan(at=[["layer2", "blocks.2"]]))


def test_bad_plans_name_the_problem(models):
    model = models["test_resnet"]
    with pytest.raises(fs.PlanError, match="unknown fusion unit 'nddx'.*nddr"):
        fs.build(model, {"a": 1, "b": 1}, fs.StitchPlan(at=["layer1"], unit="nddx"))
    with pytest.raises(fs.CutPointError, match="layer7"):
        fs.build(model, {"a": 1, "b": 1}, fs.StitchPlan(at=["layer7"]))
    with pytest.raises(fs.PlanError, match="shared_prefix 'layer3' comes after"):
        fs.build(model, {"a": 1, "b": 1}, fs.StitchPlan(at=["layer1", "layer4"], shared_prefix="layer3"))
    with pytest.raises(fs.PlanError, match="bad arguments for fusion unit 'nddr'"):
        fs.build(model, {"a": 1, "b": 1}, fs.StitchPlan(at=["layer1"], unit_args={"alpha": 3}))
    with pytest.raises(fs.PlanError, match="output size"):
        fs.build(model, "seg,normal", fs.StitchPlan())


def test_heads_fix_output_shapes(models):
    net = fs.build(models["test_vit"], {"seg": 7, "gender": 2}, fs.StitchPlan(at=["blocks.2"]))
    out = net(torch.randn(2, 3, 160, 160))
    assert out["seg"].shape == (2, 7, 160, 160)
    assert out["gender"].shape == (2, 2)


def test_registered_tasks_bring_their_own_heads(tmp_path, models):
    from fusionsearch.tasks.dense import ASPPHead

    net = fs.build(
        models["test_resnet"],
        {"seg": 5, "age": 100, "mytask": 4},
        fs.StitchPlan(at=["layer2"]),
        task_args={"seg": {"rates": [1, 2]}},
    )
    aspp = net.heads["seg"].body.body
    assert isinstance(aspp, ASPPHead) and [b.dilation[0] for b in aspp.branches] == [1, 2]
    assert isinstance(net.heads["mytask"], SimpleHead)
    out = net(_x(models["test_resnet"]))
    assert out["age"].shape == (2, 100) and out["mytask"].shape[1] == 4
    # the head's arguments survive save/load
    fs.save(net, tmp_path / "n.pt")
    again = fs.load(tmp_path / "n.pt", backbone=models["test_resnet"])
    assert [b.dilation[0] for b in again.heads["seg"].body.body.branches] == [1, 2]
    with pytest.raises(fs.PlanError, match="normal predicts 3 channels"):
        fs.build(models["test_resnet"], {"seg": 5, "normal": 2})


def test_torch_compile_and_export(models):
    net = fs.build(models["test_resnet"], {"seg": 5, "normal": 3}, fs.StitchPlan(at=["layer1", "layer3"])).eval()
    x = _x(models["test_resnet"], batch=1)
    with torch.no_grad():
        ref = net(x)
        compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
        out = compiled(x)
    torch.testing.assert_close(out["seg"], ref["seg"])
    exported = torch.export.export(net, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x)["normal"], ref["normal"])
