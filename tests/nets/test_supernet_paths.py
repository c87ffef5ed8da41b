"""The weight-sharing supernet (issue 22): a path is the plan built alone, fair paths train every
candidate once per step, every parameter is in one optimiser group, BatchNorm recalibration."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import tiny_recipe
from torch import nn

from fusionsearch.errors import PlanError
from fusionsearch.experiment.experiment import Experiment, WarmStart
from fusionsearch.nets.plan import StitchPlan
from fusionsearch.nets.supernet import NONE_UNIT, SuperNet, plan_of, recalibrate_batchnorm

UNITS = [NONE_UNIT, "nddr", "cross_stitch", "sluice"]


@pytest.fixture(scope="module")
def made():
    exp = Experiment(tiny_recipe())
    warm = WarmStart.of(exp.build(exp.baseline_plan("single"), init_seed=0))
    points = exp.points("boundaries")
    build = lambda u: exp.build(StitchPlan(at=points, unit=u, unit_args={"init": (0.9, 0.1)}), start=warm, init_seed=3)
    return exp, warm, points, SuperNet(build, UNITS, points)


def test_a_path_on_the_supernet_is_the_plan_built_alone(made):
    exp, warm, points, sn = made
    x = torch.randn(2, 3, 32, 32)
    for path in (
        dict.fromkeys(points, NONE_UNIT),
        {points[0]: "nddr", points[2]: "cross_stitch"},
        {p: u for p, u in zip(points, ["sluice", "nddr", "cross_stitch", "nddr", "sluice"])},
    ):
        alone = exp.build(plan_of(path, {"init": (0.9, 0.1)}), start=warm, init_seed=3).eval()
        sub = sn.subnet(path).eval()
        with torch.no_grad():
            a, b = alone(x), sub(x)
        for t in a:
            assert torch.allclose(a[t], b[t], atol=1e-6), (path, t)
        assert sub.plan.at == [p for p, u in path.items() if u != NONE_UNIT]


def test_fair_paths_train_every_unit_at_every_point_once_per_step(made):
    _, _, points, sn = made
    paths = sn.fair_paths(random.Random(0))
    assert len(paths) == len(UNITS)
    for p in points:
        assert sorted(path[p] for path in paths) == sorted(UNITS)
    assert paths != sn.fair_paths(random.Random(1))  # the order is drawn, not fixed


def test_every_parameter_is_in_exactly_one_group_at_its_units_multiplier(made):
    _, _, points, sn = made
    groups = sn.param_groups(1.0, optimizer="adamw")
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in sn.parameters() if p.requires_grad}
    names = [g["name"] for g in groups]
    assert names.count("backbone") == 1 and names.count("heads") == 1
    for u in ("nddr", "cross_stitch", "sluice"):
        assert any(n.startswith("fusion:") and n.endswith(f":{u}") for n in names), u


def test_a_path_outside_the_supernet_is_refused_by_name(made):
    _, _, points, sn = made
    with pytest.raises(PlanError, match="is not in this supernet"):
        sn.subnet({"layer9": "nddr"})
    with pytest.raises(PlanError, match="is not in this supernet"):
        sn.subnet({points[0]: "mtan"})


def test_recalibrated_batchnorm_holds_the_mean_statistics_of_its_batches():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    net.train(False)
    batches = [torch.randn(3, 3, 5, 5) + i for i in range(3)]
    assert recalibrate_batchnorm(net, batches) == 9
    with torch.no_grad():
        feats = [net[0](b) for b in batches]
    bn = net[1]  # the mean over the batches of each batch's statistics, whatever it held before
    assert torch.allclose(bn.running_mean, torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack([f.var((0, 2, 3)) for f in feats]).mean(0), atol=1e-5)
    assert bn.momentum == 0.1 and not net.training  # modes and momentum restored


def test_recalibration_within_a_part_leaves_the_other_batchnorm_as_it_was():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    net.eval()
    kept = net[1].running_mean.clone()
    recalibrate_batchnorm(net, [torch.randn(2, 3, 5, 5) + 3], within=net[3])
    assert torch.equal(net[1].running_mean, kept) and not torch.equal(net[3].running_mean, torch.zeros(4))
