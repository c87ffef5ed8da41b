"""The search space: choices, define-by-run, common random numbers."""

from __future__ import annotations

import optuna
import pytest
import torch
from helpers import tiny_recipe
from typer.testing import CliRunner

import fusionsearch as fs
from fusionsearch.experiment.space import SearchSpace

runner = CliRunner()


def test_space_turns_choices_into_plans():
    space = SearchSpace.from_dict(
        {
            "units": ["none", "nddr", "cross_stitch"],
            "fixed": {"unit@a": "nddr", "unit@b": "cross_stitch", "unit@c": "nddr", "shared_prefix": "none"},
        }
    )
    study = optuna.create_study()
    trial = study.ask()
    s = space.sample(trial, ["a", "b", "c"], 2)
    assert s.plan.at == ["a", "b", "c"] and s.plan.unit == "nddr"
    assert s.plan.per_point["b"]["unit"] == "cross_stitch"
    alpha, beta = s.plan.unit_args["init"]
    assert 0.5 <= alpha <= 1 and beta == pytest.approx(1 - alpha)
    assert 1 <= s.plan.unit_args["lr_mult"] <= 1000
    # a shared trunk up to b leaves only c to fuse
    space.fixed["shared_prefix"] = "b"
    s = space.sample(study.ask(), ["a", "b", "c"], 2)
    assert s.plan.at == ["c"] and s.plan.shared_prefix == "b"
    with pytest.raises(fs.PlanError, match="search units name 'nddx'"):
        SearchSpace.from_dict({"units": ["nddx"]})
    with pytest.raises(fs.PlanError, match="unknown search field"):
        SearchSpace.from_dict({"lr_multiplier": [1, 10]})


def test_space_draws_no_unit_where_the_shared_prefix_leaves_nothing_to_fuse():
    space = SearchSpace.from_dict({"units": ["none", "nddr"]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_prefixes = set()
    for _ in range(30):
        trial = study.ask()
        s = space.sample(trial, ["a", "b", "c", "d"], 2)
        prefix = trial.params["shared_prefix"]
        seen_prefixes.add(prefix)
        drawn = sorted(k.removeprefix("unit@") for k in trial.params if k.startswith("unit@"))
        after = ["a", "b", "c", "d"][["none", "a", "b", "c"].index(prefix) :]
        assert drawn == after, (prefix, drawn)
        if not s.plan.at:  # no unit placed: no unit arguments drawn either
            assert not {"init_alpha", "lr_mult", "fusion_weight_decay"} & set(trial.params)
        study.tell(trial, 0.0)
    assert len(seen_prefixes) > 2
    with pytest.raises(fs.PlanError, match="column_init must be single, scratch"):
        SearchSpace.from_dict({"column_init": "generic"})


def test_new_modules_start_alike_in_every_plan_of_a_seed():
    """Common random numbers: the unit at layer2 is drawn from (seed, its name) only."""
    from fusionsearch.experiment.experiment import Experiment

    exp = Experiment(tiny_recipe())
    args = {"init": "xavier"}

    def unit_at_layer2(at, seed):
        net = exp.build(fs.StitchPlan(at=at, unit="nddr", unit_args=args), init_seed=seed)
        return next(u for p, u in net.fusion_units().items() if p == "layer2").weights[0].detach()

    a = unit_at_layer2(["layer2"], 0)
    assert torch.equal(a, unit_at_layer2(["act1", "layer1", "layer2", "layer4"], 0))
    assert not torch.equal(a, unit_at_layer2(["layer2"], 1))
