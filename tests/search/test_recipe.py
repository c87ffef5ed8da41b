"""Recipes: validation with field names, and every shipped recipe builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import fusionsearch as fs
from fusionsearch.search.recipe import RecipeError, load_recipe
from fusionsearch.search.space import SearchSpace

runner = CliRunner()


def test_recipe_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: resnet18\ntrian: {steps: 3}\n")
    with pytest.raises(RecipeError, match=r"unknown recipe field\(s\) \['trian'\] in .*bad.yaml"):
        load_recipe(bad)
    bad.write_text("train: {stpes: 3}\n")
    with pytest.raises(RecipeError, match=r"unknown field train\.stpes"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="no recipe 'nope'"):
        load_recipe("nope")


RECIPES = sorted(p.stem for p in (Path(fs.__file__).parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_loads_validates_and_builds(name):
    from fusionsearch.report.compare import compare_rows
    from fusionsearch.search.experiment import Experiment

    r = load_recipe(name)
    assert r.reproduces and r.about, "a recipe says what it reproduces"
    small = dict(r.data, size=64)
    exp = Experiment(r.with_overrides(data=small))
    plan = exp.plan_from(r.plan)
    for p in plan.at:
        exp.graph().resolve(p)
    space = SearchSpace.from_dict(r.search)
    assert exp.points(space.points)
    if r.study.get("sampler") == "grid":
        from fusionsearch.search.study import grid_points

        grid = [{k: str(v) for k, v in p.items()} for p in grid_points(r.with_overrides(data=small))]
        rows = r.compare["grid_rows"]
        assert len(rows) == len(grid) == len(r.paper["rows"]), "one table row per grid point"
        for label, params in rows.items():
            assert label in r.paper["rows"]
            assert any(all(p[k] == str(v) for k, v in params.items()) for p in grid), (label, params)
    for baseline in compare_rows(r).values():
        exp.baseline_plan(baseline)
    directions = exp.directions()
    for row, tasks in r.paper.get("rows", {}).items():
        for task, metrics in tasks.items():
            assert task in directions, (row, task)
            assert set(metrics) - {"fwiou"} <= set(directions[task]), (row, metrics)
    net = exp.build(plan, read_data=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = net.eval()(x)
    assert set(out) == set(r.tasks)


def test_data_on_the_command_line_moves_the_recipes_own_data_set_and_replaces_another():
    from fusionsearch.search.recipe import parse_data

    celeba = {"name": "celeba", "root": "data/celeba", "size": 64, "attributes": {"hair": ["Black_Hair"]}}
    assert parse_data("celeba:/d/celeba", celeba) == {**celeba, "root": "/d/celeba"}  # groups kept
    assert parse_data("celeba", celeba) == celeba
    other = parse_data("folder:/d/mine", {**celeba, "labelled": {"attr": 0.1}})
    assert other == {"name": "folder", "root": "/d/mine", "size": 64, "labelled": {"attr": 0.1}}
