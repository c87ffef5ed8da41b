"""A recipe made concrete: warm starts from the single-task nets."""

from __future__ import annotations

import torch
from helpers import _trained_single, tiny_recipe
from typer.testing import CliRunner

import fusionsearch as fs

runner = CliRunner()


def test_a_warm_started_net_at_identity_is_the_single_task_net():
    from fusionsearch.experiment.experiment import Experiment, WarmStart

    exp = Experiment(tiny_recipe())
    single = _trained_single(exp)
    start = WarmStart.of(single)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = single(x)
        for unit, exact in (("cross_stitch", True), ("nddr", False), ("sluice", True)):
            plan = fs.StitchPlan(at=["layer1", "layer3"], unit=unit, unit_args={"init": (1.0, 0.0)})
            got = exp.build(plan, start=start, init_seed=0).eval()(x)
            for t in want:  # columns and heads both come from the single-task nets
                if exact:
                    assert torch.equal(got[t], want[t]), (unit, t)
                else:  # NDDR's BatchNorm divides by sqrt(1 + eps), eps 1e-3 as the official code
                    torch.testing.assert_close(got[t], want[t], rtol=3e-3, atol=3e-3)
        # the split baselines start the same way: the trunk from the first task's column
        shared = exp.build(fs.StitchPlan(shared_prefix="layer2"), start=start).eval()(x)
        torch.testing.assert_close(shared["seg"], want["seg"])


def test_columns_start_from_the_single_task_nets():
    from fusionsearch.experiment.experiment import Experiment, column_weights_of

    exp = Experiment(tiny_recipe())
    single = exp.build(exp.baseline_plan("single"))
    with torch.no_grad():
        for p in single.parameters():
            p.add_(torch.randn_like(p))  # "trained"
    fused = exp.build(exp.baseline_plan("nddr_default"), column_weights=column_weights_of(single))
    x = torch.randn(2, 3, 32, 32)
    single.eval(), fused.eval()
    for got, want in zip(fused.columns[1][0].eval_graph.parameters(), single.columns[1][0].eval_graph.parameters()):
        torch.testing.assert_close(got, want)
    with torch.no_grad():  # NDDR at (1, 0) would be the identity; at (0.9, 0.1) the nets differ
        assert not torch.allclose(fused(x)["normal"], single(x)["normal"])
