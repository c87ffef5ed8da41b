"""``fusionsearch.plugins``: a user's module or ``.py`` file loaded once, under its own name, with
its folder on ``sys.path`` (so spawned DataLoader workers unpickle its classes); every failure one
``PluginError`` line naming the plugin; the recipe's ``plugins`` field loaded before the recipe
is checked and stored absolute; a study's stored plugins found under another path."""

from __future__ import annotations

import json

import pytest
import torch
from plugin_helpers import forgetting_plugins, plugin_recipe, write_plugin
from torch.utils.data import DataLoader

from fusionsearch.data import DATASETS, SyntheticScenes
from fusionsearch.errors import PluginError
from fusionsearch.experiment.recipe import RecipeError, load_recipe
from fusionsearch.plugins import load_plugins, loaded_plugins, origin, require_plugins


@pytest.fixture(autouse=True)
def forget():
    with forgetting_plugins():
        yield


def test_a_file_is_loaded_once_under_its_stem_and_recorded_absolute(tmp_path, monkeypatch):
    path = write_plugin(tmp_path / "mine", stem="pm_scenes_a", name="pm_scenes_a")
    monkeypatch.chdir(tmp_path)
    # relative to base, then again from the working folder, then absolute: one import (a second
    # would fail, the data set's name being registered already) and one canonical spec
    specs = load_plugins(["pm_scenes_a.py"], base=tmp_path / "mine")
    assert specs == [str(path)]
    assert load_plugins(["mine/pm_scenes_a.py", str(path), str(path)]) == [str(path)]
    assert loaded_plugins()[-1] == str(path) and loaded_plugins().count(str(path)) == 1
    cls = DATASETS.get("pm_scenes_a")
    assert cls.__module__ == "pm_scenes_a" and str(path.parent) in __import__("sys").path
    assert origin(cls) == str(path)
    assert origin(SyntheticScenes) == "fusionsearch" and origin(json.JSONDecoder) == "json.decoder"


def test_a_module_is_loaded_by_name_and_owns_what_it_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "pm_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "units.py").write_text(
        "from fusionsearch.data import SyntheticScenes, register_dataset\n"
        "@register_dataset('pm_module_scenes')\nclass S(SyntheticScenes):\n    '''From a package.'''\n"
    )
    (pkg / "plugin.py").write_text("import pm_pkg.units  # noqa\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_plugins(["pm_pkg.plugin", "pm_pkg.plugin"]) == ["pm_pkg.plugin"]
    assert origin(DATASETS.get("pm_module_scenes")) == "pm_pkg.plugin"  # defined in a module the plugin imported


@pytest.mark.parametrize(
    "spec, says",
    [
        ("absent.py", "plugin file {tmp}/absent.py does not exist"),
        ("pm_no_such_package.plugin", "plugin 'pm_no_such_package.plugin': no module named 'pm_no_such_package'"),
        ("pm_boom.py", "plugin file {tmp}/pm_boom.py failed while importing: RuntimeError: broken on purpose second"),
        ("json.py", "plugin file {tmp}/json.py would shadow module 'json' ("),
        ("pytest.py", "plugin file {tmp}/pytest.py would shadow module 'pytest' ("),
        ("pm-dash.py", "'pm-dash' is not a Python module name"),
        ("notes.txt", "must be a Python file ending in .py"),
        ("1bad", "plugin '1bad' is neither a module name"),
    ],
)
def test_each_failure_is_one_plugin_error_line_naming_the_plugin(tmp_path, spec, says):
    (tmp_path / "pm_boom.py").write_text("raise RuntimeError('broken on purpose\\nsecond line')\n")
    for name in ("json.py", "pytest.py", "pm-dash.py", "notes.txt"):
        (tmp_path / name).write_text("x = 1\n")
    with pytest.raises(PluginError) as e:
        load_plugins([spec], base=tmp_path)
    assert says.format(tmp=tmp_path.resolve()) in str(e.value) and "\n" not in str(e.value)
    assert not [s for s in loaded_plugins() if str(tmp_path) in s]  # nothing half-loaded is recorded


def test_a_plugin_file_may_not_take_the_name_of_another_plugin_file(tmp_path):
    load_plugins([str(write_plugin(tmp_path / "a", stem="pm_twin", name="pm_twin_a"))])
    with pytest.raises(PluginError, match=r"would shadow module 'pm_twin' \(.*/a/pm_twin.py\): rename it"):
        load_plugins([str(write_plugin(tmp_path / "b", stem="pm_twin", name="pm_twin_b"))])


def test_a_spawned_dataloader_worker_unpickles_the_plugins_data_set(tmp_path):
    # multiprocessing's spawn copies sys.path before it unpickles: the plugin's folder is on it
    load_plugins([str(write_plugin(tmp_path, stem="pm_spawned", name="pm_spawned"))])
    data = DATASETS.get("pm_spawned")("train", 4, 32, 0)
    loader = DataLoader(data, batch_size=2, num_workers=1, multiprocessing_context="spawn")
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["image"].shape == (2, 3, 32, 32)
    assert torch.equal(batches[1]["seg"][1], data[3]["seg"])


def test_the_recipe_loads_its_plugins_first_relative_to_its_file_and_stores_them_absolute(tmp_path, monkeypatch):
    write_plugin(tmp_path / "recipes" / "lib", stem="pm_recipe_scenes", name="pm_recipe_scenes")
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.write_text("plugins: [lib/pm_recipe_scenes.py]\ndata: {name: pm_recipe_scenes, size: 32}\n")
    monkeypatch.chdir(tmp_path / "recipes" / "lib")  # not the recipe's folder
    r = load_recipe(recipe)
    stored = str((tmp_path / "recipes" / "lib" / "pm_recipe_scenes.py").resolve())
    assert r.plugins == [stored] and r.to_dict()["plugins"] == [stored]
    recipe.write_text("plugins: {a: 1}\n")
    with pytest.raises(RecipeError, match=r"recipe 'r': plugins must be a list of module names or .py files"):
        load_recipe(recipe)
    recipe.write_text("plugins: [missing.py]\n")
    with pytest.raises(PluginError, match=r"recipe 'r': plugins: plugin file .*/recipes/missing.py does not exist"):
        load_recipe(recipe)


def test_a_stored_plugin_is_found_under_another_path_or_named_with_what_to_do(tmp_path):
    first = write_plugin(tmp_path / "there", stem="pm_moved", name="pm_moved")
    stored = plugin_recipe(first, name="pm_moved").to_dict()["plugins"]
    with pytest.raises(PluginError) as e:
        require_plugins(["/nowhere/pm_other.py"], "study 'S'")
    assert str(e.value) == (
        "study 'S' needs the plugin '/nowhere/pm_other.py', which cannot be loaded here (plugin file"
        " /nowhere/pm_other.py does not exist): copy it to this machine and pass --plugin PATH"
    )
    # the worker machine's copy, loaded by --plugin, stands for the stored path of the same name
    assert require_plugins(["/elsewhere/pm_moved.py", *stored], "study 'S'") == ["/elsewhere/pm_moved.py", *stored]
