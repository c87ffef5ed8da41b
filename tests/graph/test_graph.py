"""The backbone graph: cut points, stage boundaries, and exact splits on real timm models."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import EXTRA_MODELS
from torch import nn

import fusionsearch as fs

TEST_MODELS = timm.list_models("test_*")
ALL_MODELS = TEST_MODELS + list(EXTRA_MODELS)


def _x(g: fs.BackboneGraph, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *g.input_size, generator=torch.Generator().manual_seed(1))


def test_every_timm_test_model_is_covered():
    assert len(TEST_MODELS) >= 15  # timm's tiny models: all of them are parametrised below


@pytest.mark.parametrize("name", ALL_MODELS)
def test_boundaries_and_exact_split(graph_of, name):
    g = graph_of(name)
    assert len(g.boundaries) >= 3, [b.name for b in g.boundaries]
    reductions = [b.reduction for b in g.boundaries]
    assert reductions == sorted(reductions), reductions
    for b in g.boundaries:
        assert b.layout in ("NCHW", "NHWC", "NLC", "NCL")
        assert b.channels == (b.shape[0] if b.layout in ("NCHW", "NCL") else b.shape[-1])
    # params before a point only grow
    params = [c.params_before for c in g.cut_points]
    assert params == sorted(params)

    x = _x(g)
    with torch.no_grad():
        ref = g.model.forward_features(x)
        for points in (g.boundaries, g.cut_points, g.boundaries[1::2]):
            segments = g.split(points)
            out = fs.run_segments(segments, x)
            assert torch.equal(out, ref), f"split at {len(points)} points differs"
        assert torch.equal(g.module(x), ref)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_gradients_through_segments_match(graph_of, name):
    g = graph_of(name)
    x = _x(g)
    ref_x = x.clone().requires_grad_(True)
    seg_x = x.clone().requires_grad_(True)
    g.model.zero_grad()
    g.model.forward_features(ref_x).float().pow(2).mean().backward()
    ref_grads = {n: p.grad.clone() for n, p in g.model.named_parameters() if p.grad is not None}
    g.model.zero_grad()
    fs.run_segments(g.split(g.boundaries), seg_x).float().pow(2).mean().backward()
    seg_grads = {n: p.grad for n, p in g.model.named_parameters() if p.grad is not None}
    g.model.zero_grad()
    assert ref_grads.keys() == seg_grads.keys()
    torch.testing.assert_close(seg_x.grad, ref_x.grad, rtol=1e-5, atol=1e-6)
    for n in ref_grads:
        torch.testing.assert_close(seg_grads[n], ref_grads[n], rtol=1e-5, atol=1e-6, msg=n)


def test_resnet_boundaries_are_feature_info_names(graph_of):
    g = graph_of("resnet18")
    assert [b.name for b in g.boundaries] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert [b.reduction for b in g.boundaries] == [2, 4, 8, 16, 32]
    assert [b.channels for b in g.boundaries] == [64, 64, 128, 256, 512]
    assert g.boundaries[1].shape == (64, 16, 16)
    assert all(b.nonnegative for b in g.boundaries)  # ReLU outputs


def test_vgg_stage_starts_are_the_pools(graph_of):
    g = graph_of("vgg11")
    pools = [name for name, m in g.model.features.named_children() if isinstance(m, nn.MaxPool2d)]
    assert [b.name for b in g.stage_starts] == [f"features.{p}" for p in pools]
    assert [b.reduction for b in g.stage_starts] == [2, 4, 8, 16, 32]
    assert g.resolve("features.20").reduction == 32


def test_token_net_boundaries_are_blocks(graph_of):
    g = graph_of("test_vit")
    assert [b.name for b in g.boundaries] == [f"blocks.{i}" for i in range(len(g.model.blocks))]
    assert all(b.layout == "NLC" and b.reduction == 16 for b in g.boundaries)


def test_nhwc_stages_are_detected(graph_of):
    g = graph_of("swin_tiny_patch4_window7_224")
    assert [b.layout for b in g.boundaries] == ["NHWC"] * 4
    assert [b.channels for b in g.boundaries] == [96, 192, 384, 768]


def test_non_timm_module_uses_last_cut_per_resolution():
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet18()
    body = nn.Sequential(*list(net.children())[:-2])  # no pooling / fc
    g = fs.trace(body, (3, 64, 64))
    assert [b.reduction for b in g.boundaries] == [2, 4, 8, 16, 32]
    assert [b.name for b in g.boundaries][1:] == ["4", "5", "6", "7"]


class _ShapeLater(nn.Module):
    """Reads the input's size first and uses it at the end (as XCiT and EVA do)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return x.reshape(b, 8, h * w).transpose(1, 2)


def test_size_edges_do_not_block_cuts_and_travel_beside_the_tensor():
    g = fs.trace(_ShapeLater(), (3, 16, 16))
    names = [c.name for c in g.cut_points]
    assert {"a", "b", "c"} <= set(names), names
    segments = g.split(["a", "b"])
    assert segments[1].side_in > 0  # the sizes read at the top ride along
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(fs.run_segments(segments, x), g.model(x))


class _TwoBranch(nn.Module):
    """Carries two resolutions in parallel (like HRNet): no single-tensor cut at the low one."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.hi = nn.Conv2d(8, 8, 3, padding=1)
        self.lo = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        lo = self.lo(self.down(x))
        hi = self.hi(x)
        return self.head(hi + nn.functional.interpolate(lo, scale_factor=2.0))


def test_resolution_without_cut_is_reported_and_other_cuts_offered():
    with pytest.warns(UserWarning, match="8x8"):
        g = fs.trace(_TwoBranch(), (3, 16, 16))
    assert g.uncut_resolutions == [(8, 8)]
    assert any("8x8" in note for note in g.notes)
    assert "stem" in [c.name for c in g.cut_points]
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(fs.run_segments(g.split(g.boundaries), x), g.model(x))


class _Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent: torch.fx cannot trace this
            return x * 2
        return x


class _NeedsLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gate = _Branchy()
        self.out = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.gate(self.conv(x)))


def test_untraceable_module_is_named_with_the_leaf_fix():
    with pytest.raises(fs.TraceError) as err:
        fs.trace(_NeedsLeaf(), (3, 8, 8))
    assert err.value.module_path == "gate"
    assert "_Branchy" in str(err.value) and "leaf" in str(err.value)
    g = fs.trace(_NeedsLeaf(), (3, 8, 8), leaf=["_Branchy"])
    assert "gate" in [c.name for c in g.cut_points]
    g = fs.trace(_NeedsLeaf(), (3, 8, 8), leaf=[_Branchy])
    assert "gate" in [c.name for c in g.cut_points]


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(fs.UnknownBackboneError) as err:
        fs.trace("resnet1O1")
    assert "resnet1O1" in str(err.value)
    assert "resnet101" in err.value.suggestions


def test_unknown_cut_point_names_the_problem(graph_of):
    g = graph_of("resnet18")
    with pytest.raises(fs.CutPointError, match="layer5.*Closest: layer"):
        g.split(["layer5"])
    with pytest.raises(fs.CutPointError, match="not a cut point"):
        g.split(["layer1.0.conv1"])  # inside a residual block: never a cut


def test_split_accepts_any_subset_in_any_order(graph_of):
    g = graph_of("test_resnet")
    a = g.split(["layer3", g.boundaries[0], "layer1"])
    b = g.split([g.boundaries[0].name, "layer1", "layer3", "layer1"])
    assert [s.end for s in a] == [s.end for s in b] == [g.boundaries[0].name, "layer1", "layer3", None]


class _TrainBranch(nn.Module):
    """Python code that branches on self.training: the train graph differs from the eval one."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        if self.training:
            x = x * 0.5
        return self.b(torch.relu(x))


def test_train_and_eval_graphs_both_kept():
    net = _TrainBranch()
    g = fs.trace(net, (3, 8, 8))
    assert g.train_graph_differs
    segments = g.split(["a"])
    x = torch.randn(2, 3, 8, 8)
    net.train()
    for s in segments:
        s.train()
    assert torch.equal(fs.run_segments(segments, x), net(x))
    net.eval()
    for s in segments:
        s.eval()
    assert torch.equal(fs.run_segments(segments, x), net(x))


def test_concrete_defaults_let_optional_inputs_trace():
    g = fs.trace("test_vit")  # forward_features(x, attn_mask=None)
    assert sum(1 for n in g.module.graph.nodes if n.op == "placeholder") == 1
