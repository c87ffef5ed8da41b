"""A partial-label study: every plan and the single-task reference train on per-task batches, and
``search.partial_loss`` is a searched choice that the confirmation trains again as recorded."""

from __future__ import annotations

import pytest
import yaml
from helpers import tiny_recipe
from typer.testing import CliRunner

from fusionsearch.cli import app
from fusionsearch.errors import PlanError
from fusionsearch.experiment.experiment import Experiment
from fusionsearch.experiment.recipe import RecipeError
from fusionsearch.search import load_study
from fusionsearch.search.jobs import ConfirmRun, Job
from fusionsearch.search.records import TrialRecord
from fusionsearch.train.partial import batches_of

runner = CliRunner()


def test_auto_batches_are_per_task_on_partial_labels_only():
    full = tiny_recipe()
    partial = full.with_overrides(data={**full.data, "labelled": {"normal": 0.25}})
    assert batches_of("auto", Experiment(full).datasets()[0]) == "mixed"
    assert batches_of("auto", Experiment(partial).datasets()[0]) == "per_task"
    assert batches_of("mixed", Experiment(partial).datasets()[0]) == "mixed"


@pytest.mark.parametrize("rules", [[], ["batch", "mean"], "batch"])
def test_a_bad_partial_loss_choice_is_named(rules):
    with pytest.raises((PlanError, RecipeError), match="partial_loss"):
        tiny_recipe(partial_loss=rules)  # the search section is parsed with the recipe


def test_the_rule_is_a_grid_and_search_parameter():
    space = tiny_recipe(partial_loss=["batch", "labelled"], units=["none", "nddr"], init=[[0.9, 0.1]]).space
    space.fixed.update({"fusion_weight_decay": 1e-4, "lr_scale": 1.0, "loss_weight@normal": 1.0})
    assert space.grid(["layer1", "layer2"])["partial_loss"] == ["batch", "labelled"]
    assert "partial_loss" in space.parameter_names(["layer1", "layer2"])


@pytest.mark.slow
def test_a_searched_rule_is_recorded_and_confirmed_as_drawn(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tiny_recipe(column_init="scratch", partial_loss=["batch", "labelled"], units=["none", "nddr"]).to_dict()
    d.update(name="tiny", study={"trials": 3, "pruner": "none", "seed": 0}, confirm={"top": 2, "seeds": 2})
    d["data"]["labelled"] = {"normal": 0.25}
    d["train"]["steps"] = 2
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(d))
    run = runner.invoke(app, ["run", "--recipe", "tiny.yaml", "--quiet"], terminal_width=250)
    assert run.exit_code == 0, run.output
    study, _, _ = load_study("tiny-test_resnet-seg-normal", "sqlite:///fusionsearch.db")
    trials = study.get_trials()
    drawn = {t.number: t.params.get("partial_loss") for t in trials if "partial_loss" in t.params}
    assert len(drawn) == 3 and set(drawn.values()) <= {"batch", "labelled"}
    for t in trials:
        job = Job.of(t)
        rule = TrialRecord(t).partial_loss
        if t.number in drawn:
            assert rule == drawn[t.number]
        elif isinstance(job, ConfirmRun) and job.source is not None:
            assert rule == drawn[job.source]  # trained again with the rule it was found with
        else:
            assert rule is None  # baselines train as the recipe says
    assert "partial loss: " in run.output
