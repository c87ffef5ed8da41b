"""How fusion starts on trained columns: the papers' multipliers per optimiser (``conventions``)
and the calibrated BatchNorm start (``calibration``)."""

from __future__ import annotations

import copy

import optuna
import pytest
import torch
from helpers import _trained_single, tiny_recipe
from torch.nn.modules.batchnorm import _BatchNorm

import fusionsearch as fs
from fusionsearch.errors import FusionSearchError
from fusionsearch.experiment.experiment import Experiment, WarmStart
from fusionsearch.experiment.space import SearchSpace
from fusionsearch.nets.conventions import FUSION_LR_MULT, fusion_lr_mult
from fusionsearch.train.calibration import calibrate_batchnorm, new_batchnorms
from fusionsearch.train.config import TrainConfig
from fusionsearch.train.loading import StepSampler
from fusionsearch.train.trainer import calibrate, calibrates, fit


def _fusion_mults(net: fs.StitchedNet, optimizer: str) -> dict[str, float]:
    return {
        g["name"]: g["lr_mult"]
        for g in net.param_groups(1.0, optimizer=optimizer)
        if g["name"].startswith(("fusion:", "head_input:"))
    }


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("baseline", ["nddr_default", "cross_stitch_default", "sluice_default", "shortcut"])
def test_each_paper_default_trains_at_the_multiplier_of_its_optimiser(baseline, optimizer):
    """The papers' x100 under SGD; the translation table under AdamW, for the unit and for the
    shortcut or sluice mix it brings."""
    r = tiny_recipe()
    if baseline == "shortcut":
        r.plan = {**r.plan, "shortcut": True}
        baseline = "nddr_default"
    exp = Experiment(r)
    plan = exp.baseline_plan(baseline)
    assert "lr_mult" not in plan.unit_args  # the paper default is the optimiser's, not a number
    mults = _fusion_mults(exp.build(plan), optimizer)
    unit = plan.unit
    table = FUSION_LR_MULT[optimizer]
    head_input = "shortcut" if plan.shortcut else "sluice_beta"
    for name, mult in mults.items():
        assert mult == table[unit if name.startswith("fusion:") else head_input], name
    if optimizer == "sgd":
        assert set(mults.values()) == {100.0}  # NDDR-CNN Table 2, cross-stitch Table 2
    else:
        assert table["nddr"] == table["shortcut"] < 100.0  # a dense projection is not moved x100 a step
    if plan.shortcut or unit == "sluice":
        assert any(n.startswith("head_input:") for n in mults)


def test_a_multiplier_the_plan_names_is_kept_under_every_optimiser():
    plan = fs.StitchPlan(at=["layer1"], unit_args={"lr_mult": 100.0}, shortcut=True)
    net = fs.build("test_resnet", {"a": 3, "b": 3}, plan, input_size=(3, 32, 32))
    for optimizer in ("sgd", "adamw"):
        assert set(_fusion_mults(net, optimizer).values()) == {100.0}  # the shortcut follows the unit's
    own = fs.build(
        "test_resnet",
        {"a": 3, "b": 3},
        fs.StitchPlan(at=["layer1"], shortcut=True, head_input_lr_mult=3.0),
        input_size=(3, 32, 32),
    )
    mults = _fusion_mults(own, "adamw")
    assert mults["head_input:a:shortcut"] == 3.0 and mults["fusion:layer1:nddr"] == FUSION_LR_MULT["adamw"]["nddr"]


def test_a_unit_outside_the_table_keeps_its_sgd_default_and_gets_x1_under_adamw():
    assert fusion_lr_mult("someone_elses_unit", "sgd", 50.0) == 50.0
    assert fusion_lr_mult("someone_elses_unit", "adamw", 50.0) == 1.0
    with pytest.raises(ValueError, match="unknown optimizer"):
        fusion_lr_mult("nddr", "adam")


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_searched_lr_scale_is_relative_to_the_optimisers_default(optimizer):
    """lr_scale x the default of each placed unit: the same draw means the same under SGD and AdamW."""
    space = SearchSpace.from_dict({"lr_scale": [0.5, 0.5], "fixed": {"shortcut": True}})
    fixed = {"unit@a": "nddr", "unit@b": "cross_stitch", "unit@c": "cross_stitch", "shared_prefix": "none"}
    space.fixed.update(fixed)
    s = space.sample(optuna.create_study().ask(), ["a", "b", "c"], 2, optimizer)
    table = FUSION_LR_MULT[optimizer]
    assert s.plan.unit == "cross_stitch" and s.plan.unit_args["lr_mult"] == 0.5 * table["cross_stitch"]
    assert s.plan.per_point["a"]["lr_mult"] == 0.5 * table["nddr"]
    assert s.plan.head_input_lr_mult == 0.5 * table["shortcut"]
    # a range the recipe writes as lr_mult is a multiplier as written
    raw = SearchSpace.from_dict({"lr_mult": [7.0, 7.0], "fixed": dict(fixed)})
    r = raw.sample(optuna.create_study().ask(), ["a", "b", "c"], 2, optimizer)
    assert r.plan.unit_args["lr_mult"] == 7.0 and r.plan.per_point["a"]["lr_mult"] == 7.0


def _nddr_on_trained_columns(exp: Experiment, init=(1.0, 0.0)) -> tuple[fs.StitchedNet, fs.StitchedNet]:
    """A "trained" single-task net (perturbed weights, BatchNorm statistics of the data, as a
    trained net has) and NDDR at every boundary on its columns and heads."""
    single = _trained_single(exp)
    train, _ = exp.datasets()
    bns = [m for m in single.modules() if isinstance(m, _BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the set
    single.train()
    with torch.no_grad():
        for i in range(0, len(train), 8):
            single(_batch(train, list(range(i, min(i + 8, len(train))))))
    for m in bns:
        m.momentum = 0.1
    single.eval()
    plan = fs.StitchPlan(at=exp.points("boundaries"), unit="nddr", unit_args={"init": init})
    return single, exp.build(plan, start=WarmStart.of(single), init_seed=0)


def _batch(data, idx: list[int]) -> torch.Tensor:
    return torch.stack([data[i]["image"] for i in idx])


def _train_mode_error(net: fs.StitchedNet, single: fs.StitchedNet, x: torch.Tensor) -> float:
    """Largest deviation from the single-task nets in train mode, relative to the output's scale."""
    with torch.no_grad():
        want, got = copy.deepcopy(single).train()(x), copy.deepcopy(net).train()(x)
    return max(((got[t] - want[t]).abs().max() / want[t].abs().max()).item() for t in want)


def test_calibrated_nddr_at_identity_is_the_single_task_net_in_train_mode_too():
    """At (1, 0), calibrated: eval mode exact (1e-4); train mode within 2% of the output's scale
    on the batch it was calibrated on (what is left: the unbiased variance and eps), and on
    batches it never saw within half the papers' raw start's deviation (a batch's statistics
    differ from the pooled ones: the noise the columns' own BatchNorm adds too). The papers'
    start standardises its input in train mode and is off by a third of the scale or more."""
    r = tiny_recipe()
    r.data = {**r.data, "size": 64, "train_length": 48}
    exp = Experiment(r)
    single, paper = _nddr_on_trained_columns(exp)
    train, _ = exp.datasets()
    x = _batch(train, list(range(16)))
    same = copy.deepcopy(paper)
    assert calibrate_batchnorm(same, [{"image": x}]) > 0
    held = copy.deepcopy(paper)
    calibrate_batchnorm(held, [{"image": _batch(train, list(range(i, i + 16)))} for i in (16, 32)])
    with torch.no_grad():
        want = single.eval()(x)
        for net in (same, held):
            got = net.eval()(x)
            for t in want:
                torch.testing.assert_close(got[t], want[t], rtol=1e-4, atol=1e-4)
    paper_error = _train_mode_error(paper, single, x)
    assert paper_error > 0.3
    assert _train_mode_error(same, single, x) < 0.02
    assert _train_mode_error(held, single, x) < 0.5 * paper_error


def test_calibration_reads_the_first_training_batches_of_the_seed_and_nothing_else():
    exp = Experiment(tiny_recipe())
    _, net = _nddr_on_trained_columns(exp, init=(0.9, 0.1))
    train, _ = exp.datasets()
    read: list[int] = []

    class Recorder(torch.utils.data.Dataset):
        def __len__(self):
            return len(train)

        def __getitem__(self, i):
            read.append(int(i))
            return train[i]

    cfg = TrainConfig(batch_size=4, seed=3, bn_calibration_batches=2, steps=10)
    runs = []
    for _ in range(2):
        read.clear()
        twin = copy.deepcopy(net)
        before = torch.get_rng_state()
        calibrate(twin, Recorder(), cfg, torch.device("cpu"))
        assert torch.equal(torch.get_rng_state(), before)  # the training that follows sees the same draws
        runs.append((list(read), [bn.running_mean.clone() for bn in new_batchnorms(twin)]))
    expected = [i for batch in StepSampler(len(train), 4, 3, 0, 2) for i, _ in batch]  # (index, draw seed)
    assert runs[0][0] == expected == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):  # deterministic: workers elsewhere compute the same
        assert torch.equal(a, b)
    bns = new_batchnorms(net)
    assert bns and all(isinstance(b, _BatchNorm) for b in bns)
    assert not any(b is c for b in bns for c in new_batchnorms(exp.build(exp.baseline_plan("single"))))


def test_calibration_sets_each_unit_to_its_input_mix():
    """A deeper unit is calibrated on what it sees at init (the earlier units passing their mix),
    and every calibrated BatchNorm's affine undoes its own normalisation."""
    exp = Experiment(tiny_recipe())
    _, net = _nddr_on_trained_columns(exp, init=(0.9, 0.1))
    train, _ = exp.datasets()
    x = _batch(train, list(range(8)))
    assert calibrate_batchnorm(net, [{"image": x}]) == len(new_batchnorms(net)) > 0
    for bn in new_batchnorms(net):
        torch.testing.assert_close(bn.weight, torch.sqrt(bn.running_var + bn.eps))
        torch.testing.assert_close(bn.bias, bn.running_mean)
        assert bn.running_var.min() > 0


def test_bn_init_auto_calibrates_warm_started_plans_only():
    exp = Experiment(tiny_recipe())
    single, warm = _nddr_on_trained_columns(exp)
    scratch = exp.build(exp.baseline_plan("nddr_default"))
    auto = TrainConfig()
    assert calibrates(warm, auto) and not calibrates(scratch, auto)
    assert not calibrates(warm, TrainConfig(bn_init="paper"))
    assert calibrates(scratch, TrainConfig(bn_init="calibrated"))
    with pytest.raises(FusionSearchError, match="bn_init"):
        TrainConfig(bn_init="calibrate")
    # fit does it before the first step: after 1 step at lr ~0 the BatchNorm holds the data's statistics
    train, val = exp.datasets()
    cfg = TrainConfig(steps=1, batch_size=4, base_lr=1e-12, optimizer="adamw", progress=False, eval_every=1)
    fit(warm, exp.tasks(), train, None, cfg, device="cpu")
    assert all(not torch.allclose(bn.weight, torch.ones_like(bn.weight)) for bn in new_batchnorms(warm))
    fit(scratch, exp.tasks(), train, None, cfg, device="cpu")
    assert all(torch.allclose(bn.weight, torch.ones_like(bn.weight)) for bn in new_batchnorms(scratch))


def test_the_recipe_can_keep_the_papers_start():
    r = tiny_recipe()
    r.train = {**r.train, "bn_init": "paper"}
    assert r.train_config().bn_init == "paper"
