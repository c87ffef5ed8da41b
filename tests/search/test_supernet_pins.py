"""A supernet study honours ``search.fixed`` (issue 34): every kind of pin reaches the supernet
it trains, the plans it scores and the slots it fills, or is refused before any work; scoring
counts distinct plans and ends in a space of few plans."""

from __future__ import annotations

import dataclasses
import random

import optuna
import pytest
import yaml
from helpers import tiny_recipe
from typer.testing import CliRunner

from fusionsearch.cli import app
from fusionsearch.errors import FusionSearchError
from fusionsearch.experiment.experiment import Experiment, WarmStart
from fusionsearch.experiment.space import SearchSpace
from fusionsearch.search import StudySettings, load_study
from fusionsearch.search.study import check_study
from fusionsearch.search.supernet_jobs import supernet_slot
from fusionsearch.search.supernet_space import supernet_space
from fusionsearch.search.supernet_training import (
    build_supernet,
    score_plans,
    scoring_study_name,
    supernet_unit_args,
    train_supernet,
)

runner = CliRunner()
POINTS = ["act1", "layer1", "layer2", "layer3", "layer4"]  # test_resnet's boundaries


@pytest.fixture(scope="module")
def start():
    exp = Experiment(tiny_recipe())
    res = exp.train(exp.baseline_plan("single"), progress=False)
    return WarmStart.of(res.net), res.metrics


def _exp(**search) -> Experiment:
    return Experiment(tiny_recipe(mode="supernet", supernet_score_steps=1, **search))


def test_a_pinned_shared_prefix_is_the_supernets_trunk(start):
    warm, _ = start
    exp = _exp(fixed={"shared_prefix": "layer2"})
    sn = build_supernet(exp, warm)
    assert sn.point_names == ["layer3", "layer4"] and sn.base.plan.shared_prefix == "layer2"
    path = sn.fair_paths(random.Random(0))[1]
    assert sn.subnet(path).plan.shared_prefix == "layer2" and len(sn.subnet(path).shared) > 0
    assert train_supernet(sn, exp, dataclasses.replace(exp.recipe.train_config(), steps=1, progress=False)).steps == 1


@pytest.mark.parametrize("unit", ["nddr", "none"])
def test_a_pinned_unit_is_its_points_only_candidate_in_every_path(start, unit):
    warm, _ = start
    sn = build_supernet(_exp(fixed={"unit@layer4": unit}), warm)
    assert sn.choices["layer4"] == [unit] and sn.choices["layer3"] == ["none", "nddr", "cross_stitch", "sluice"]
    paths = sn.fair_paths(random.Random(0))
    assert len(paths) == 4 and {p["layer4"] for p in paths} == {unit}
    assert sorted(p["layer3"] for p in paths) == sorted(sn.choices["layer3"])  # the free points stay fair


@pytest.mark.parametrize(
    ("search", "says"),
    [
        ({"fixed": {"shortcut": True}}, "cannot pin shortcut: true"),
        ({"shortcut": [True]}, "cannot pin shortcut: true"),
        ({"column_init": ["single", "scratch"], "fixed": {"column_init": "scratch"}}, "column_init must be single"),
        ({"fixed": {f"unit@{p}": "none" for p in POINTS}}, "leaves the supernet no fusion unit"),
    ],
)
def test_a_pin_the_supernet_cannot_share_is_refused_before_any_work(search, says, tmp_path):
    r = tiny_recipe(mode="supernet", **search)
    with pytest.raises(FusionSearchError, match=says):
        check_study(r, StudySettings(storage=f"sqlite:///{tmp_path}/s.db"))
    assert not (tmp_path / "s.db").exists()


def test_pinned_unit_arguments_and_training_values_reach_the_supernet():
    pins = {"init_alpha": 0.6, "lr_scale": 2.0, "fusion_weight_decay": 1e-3, "base_lr": 0.01, "loss_weight@normal": 3.0}
    space = SearchSpace.from_dict({**tiny_recipe().search, "base_lr": [0.001, 0.1], "fixed": pins, "mode": "supernet"})
    common = supernet_space(space, POINTS)
    assert (common.base_lr, common.loss_weights) == (0.01, {"normal": 3.0})
    args = supernet_unit_args(space, 2, "nddr", "adamw")
    assert args["init"] == (0.6, 0.4) and args["weight_decay"] == 1e-3
    assert args["lr_mult"] == pytest.approx(2.0 * _default_mult("nddr"))
    pinned = {"init": "1,0", "lr_mult": 10}
    choices = SearchSpace.from_dict({"init": [[1, 0], [0.9, 0.1]], "lr_mult_choices": [1, 10], "fixed": pinned})
    assert supernet_unit_args(choices, 2) == {"init": (1.0, 0.0), "lr_mult": 10.0}


def _default_mult(unit: str) -> float:
    from fusionsearch.nets.conventions import fusion_lr_mult
    from fusionsearch.nets.fusion import get_fusion

    return fusion_lr_mult(unit, "adamw", get_fusion(unit).default_lr_mult)


SLOT_PINS = {  # one pin of every kind ``search.fixed`` takes (SearchSpace.parameter_names)
    "shared_prefix": "layer2",
    "unit@layer4": "nddr",
    "shortcut": False,
    "init": "0.9,0.1",
    "lr_mult": 10,
    "fusion_weight_decay": 1e-3,
    "loss_weight@normal": 2.0,
    "base_lr": 0.01,
    "column_init": "single",
    "weighting": "dwa",
    "temperature@dwa": 2.0,
}


@pytest.mark.parametrize("key", list(SLOT_PINS))
def test_every_kind_of_pin_reaches_the_slots(key):
    extra = {"init": [[0.9, 0.1], [1, 0]], "lr_mult_choices": [1, 10], "base_lr": [0.001, 0.1]}
    extra |= {"column_init": ["single", "scratch"], "weighting": ["fixed", "dwa"]}
    fixed = {key: SLOT_PINS[key], **({"weighting": "dwa"} if key == "temperature@dwa" else {})}
    space = SearchSpace.from_dict({**tiny_recipe().search, **extra, "mode": "supernet", "fixed": fixed})
    assert key in space.parameter_names(POINTS)
    after = POINTS[3:] if key == "shared_prefix" else POINTS
    pick = {p: "cross_stitch" for p in after} | ({"layer4": "nddr"} if key == "unit@layer4" else {})
    top = [{"path": pick, "score": 1.0}]
    trial = optuna.create_study().ask()
    drawn = supernet_slot(space, 0, top, trial, lambda sp: sp.sample(trial, POINTS, 2, "adamw"))
    assert drawn.pinned[key] == SLOT_PINS[key]  # the pinned value, not a draw
    assert drawn.plan.at == after and not drawn.plan.shortcut
    assert drawn.plan.shared_prefix == ("layer2" if key == "shared_prefix" else None)
    assert {p: drawn.plan.unit_for(p)[0] for p in after} == pick


def test_scored_plans_are_distinct_and_every_plan_of_a_small_space_ends_it(start, tmp_path):
    warm, ref = start
    pins = {f"unit@{p}": "nddr" for p in POINTS[:-1]}  # one point left free: 4 plans
    exp = _exp(fixed=pins)
    sn = build_supernet(exp, warm)
    assert sn.plans == 4
    settings = StudySettings(study="s", storage=f"sqlite:///{tmp_path}/s.db")
    cfg = dataclasses.replace(exp.recipe.train_config(), steps=1, progress=False)
    ranked = score_plans(sn, exp, settings, 40, ref, cfg)  # more than the space has: all of them, and it ends
    assert sorted(r["path"]["layer4"] for r in ranked) == ["cross_stitch", "nddr", "none", "sluice"]
    trials = optuna.load_study(study_name=scoring_study_name("s"), storage=settings.storage).get_trials()
    scored = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(scored) == 4 and len({t.params["unit@layer4"] for t in scored}) == 4
    assert all(t.params[k] == "nddr" for t in trials for k in pins)  # in storage: every plan pinned
    assert all(t.user_attrs.get("repeats") for t in trials if t.state.name != "COMPLETE")


def test_run_mode_supernet_with_a_pinned_prefix_trains_and_scores_only_that_prefix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tiny_recipe().to_dict()
    d.update(name="tiny", study={"trials": 2, "pruner": "none"}, confirm={"top": 1, "seeds": 1})
    d["search"].update(supernet_plans=40, supernet_score_steps=1, fixed={"shared_prefix": "layer2"})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(d))
    result = runner.invoke(app, ["run", "--recipe", "tiny.yaml", "--mode", "supernet", "--quiet"], terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "supernet_plans is 40, the space has 16: all are scored" in result.output
    assert "16 plans scored on one supernet; its best each trained stand-alone once" in result.output
    assert "(one run per plan)" not in result.output
    url = "sqlite:///fusionsearch.db"
    st, _, _ = load_study("tiny-test_resnet-seg-normal-supernet", url)
    scored = optuna.load_study(study_name=scoring_study_name(st.study_name), storage=url).get_trials()
    done = [t for t in scored if t.state.name == "COMPLETE"]
    assert len({tuple(sorted(t.params.items())) for t in done}) == len(done) == 16
    assert all(set(t.params) == {"shared_prefix", "unit@layer3", "unit@layer4"} for t in scored)
    assert all(t.params["shared_prefix"] == "layer2" for t in scored)
    slots = [t for t in st.trials if "slot" in t.user_attrs and t.state.name == "COMPLETE"]
    assert slots and all(t.user_attrs["plan"]["shared_prefix"] == "layer2" for t in slots)


def test_a_supernet_studys_table_says_what_its_rows_are():
    from fusionsearch.report.leaderboard import search_title

    study = optuna.create_study(study_name="s")
    assert search_title(study) == "study s: the search (one run per plan)"
    study.enqueue_trial({}, user_attrs={"supernet": "train", "supernet_scored_plans": 16})
    study.optimize(lambda t: 0.0, n_trials=1)
    assert (
        search_title(study)
        == "study s: the search (16 plans scored on one supernet; its best each trained stand-alone once)"
    )
