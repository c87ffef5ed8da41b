"""``--plugin`` and entry-point plugins from the command line: a user's data set, in a file the
package never imports, is listed with its origin, trains through ``run --workers 2`` (whose
worker processes load it from the study), and a worker started by hand finds it under another
path, or refuses with one line before it takes a trial."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import tiny_recipe, worker_cmd
from optuna.trial import TrialState
from plugin_helpers import forgetting_plugins, plugin_recipe, write_plugin
from typer.testing import CliRunner

from fusionsearch.cli import app
from fusionsearch.cli.core import console
from fusionsearch.cli.options import load_recipe_with
from fusionsearch.search import StudySettings, prepare_study

runner = CliRunner()


@pytest.fixture(autouse=True)
def forget():
    with forgetting_plugins():
        yield


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fusionsearch.cli", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_list_shows_a_plugin_files_data_set_with_the_plugin_as_its_origin(tmp_path, monkeypatch):
    path = write_plugin(tmp_path, stem="cp_listed", name="cp_listed_scenes")
    monkeypatch.setattr(console, "width", 300)  # the path in one line (a narrow terminal folds it)
    result = runner.invoke(app, ["list", "datasets", "--plugin", str(path)], terminal_width=250)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "cp_listed_scenes" in line)
    assert str(path) in row and "Scenes registered by a plugin file" in row
    synthetic = next(line for line in result.output.splitlines() if " synthetic " in line)
    assert "fusionsearch" in synthetic
    assert any(" name " in line and " from " in line for line in result.output.splitlines())  # the header


@pytest.mark.parametrize(
    "spec, says",
    [
        ("cp_absent.py", "error: plugin file {tmp}/cp_absent.py does not exist"),
        ("cp_boom.py", "error: plugin file {tmp}/cp_boom.py failed while importing: ZeroDivisionError: division"),
        ("typer.py", "error: plugin file {tmp}/typer.py would shadow module 'typer' ("),
        ("cp_nowhere.plugin", "error: plugin 'cp_nowhere.plugin': no module named 'cp_nowhere'"),
    ],
)
def test_a_plugin_that_cannot_load_is_one_error_line_and_exit_2(tmp_path, monkeypatch, spec, says):
    (tmp_path / "cp_boom.py").write_text("1 / 0\n")
    (tmp_path / "typer.py").write_text("x = 1\n")
    monkeypatch.chdir(tmp_path)
    for args in (["list", "units"], ["inspect", "--backbone", "test_resnet"], ["worker", "--study", "s"]):
        result = runner.invoke(app, [*args, "--plugin", spec], terminal_width=400)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(says.format(tmp=tmp_path.resolve())), lines


def test_command_line_plugins_load_before_the_data_override_and_join_the_recipe(tmp_path, monkeypatch):
    write_plugin(tmp_path / "lib", stem="cp_override", name="cp_override_scenes")
    monkeypatch.chdir(tmp_path)
    r = load_recipe_with("quick", "test_resnet", None, "cp_override_scenes", 32, plugins=["lib/cp_override.py"])
    assert r.data["name"] == "cp_override_scenes"
    assert r.plugins == [str((tmp_path / "lib" / "cp_override.py").resolve())]


def _fake_distribution(root: Path, module: str, source: str) -> None:
    """An installed distribution as importlib.metadata sees one: METADATA and entry_points.txt."""
    info = root / "cp_fake_dist-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cp-fake-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[fusionsearch.plugins]\nfake = {module}\n")
    (root / f"{module}.py").write_text(source)


def test_an_installed_entry_point_plugin_is_loaded_by_every_command(tmp_path):
    good, broken = tmp_path / "good", tmp_path / "broken"
    _fake_distribution(good, "cp_ep_plugin", _entry_source())
    _fake_distribution(broken, "cp_ep_broken", "raise ImportError('needs a library that is not here')\n")
    here = os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(good), here) if p)}
    listed = _cli("list", "datasets", cwd=tmp_path, env={**env, "COLUMNS": "250"})
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "cp_ep_scenes" in line)
    assert "cp_ep_plugin" in row
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(broken), here) if p)
    failed = _cli("list", "units", cwd=tmp_path, env={**env, "COLUMNS": "400"})
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert failed.stderr.startswith("error: entry-point plugin 'fake' (cp_ep_broken of cp-fake-dist) failed")


def _entry_source() -> str:
    return (
        "from fusionsearch.data import SyntheticScenes, register_dataset\n\n\n"
        "@register_dataset('cp_ep_scenes')\nclass EntryScenes(SyntheticScenes):\n"
        "    '''Scenes from an installed package.'''\n"
    )


def _tiny_yaml(path: Path) -> Path:
    d = tiny_recipe().to_dict()
    d.update(name="tiny", study={"trials": 1, "pruner": "none"}, confirm={"seeds": 0})
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.mark.slow
def test_run_with_two_workers_trains_on_a_plugin_files_data_set(tmp_path):
    plugin = write_plugin(tmp_path / "mine", stem="cp_run_scenes", name="plugin_scenes")
    _tiny_yaml(tmp_path / "tiny.yaml")
    args = ["run", "--recipe", "tiny.yaml", "--plugin", "mine/cp_run_scenes.py", "--data", "plugin_scenes"]
    done = _cli(*args, "--workers", "2", "--devices", "cpu", "--quiet", "--report", "r.html", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    study = optuna.load_study(study_name="tiny-test_resnet-seg-normal", storage=f"sqlite:///{tmp_path}/fusionsearch.db")
    assert study.user_attrs["plugins"] == [str(plugin.resolve())]
    assert study.user_attrs["recipe"]["plugins"] == [str(plugin.resolve())]
    assert study.user_attrs["recipe"]["data"]["name"] == "plugin_scenes"
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE] * 5  # warm start, 3 baselines, 1 searched plan
    logs = sorted((tmp_path / "fusionsearch-artifacts" / "logs").glob("*.log"))
    assert len(logs) == 2 and all("done" in log.read_text() for log in logs)  # both workers trained


@pytest.mark.slow
def test_a_hand_started_worker_refuses_without_the_plugin_and_runs_with_its_own_copy(tmp_path):
    first = write_plugin(tmp_path / "made_here", stem="cp_worker_scenes", name="cp_worker_scenes")
    url = f"sqlite:///{tmp_path}/s.db"
    recipe = plugin_recipe(first, name="cp_worker_scenes")
    prepare_study(recipe, StudySettings(study="w", storage=url, trials=1, confirm_seeds=0, pruner="none"))
    elsewhere = tmp_path / "worker_machine"
    elsewhere.mkdir()
    copy = Path(shutil.move(str(first), str(elsewhere / first.name)))  # the study's path no longer has it
    refused = subprocess.run(worker_cmd("w", url), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"error: study 'w' needs the plugin '{first.resolve()}', which cannot be loaded here (plugin file"
        f" {first.resolve()} does not exist): copy it to this machine and pass --plugin PATH"
    ]
    study = optuna.load_study(study_name="w", storage=url)
    assert {t.state for t in study.get_trials()} == {TrialState.WAITING}  # no trial taken, none failed
    ran = subprocess.run(
        worker_cmd("w", url, "--plugin", str(copy)), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr
    assert "worker done: 5 trials" in ran.stdout
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 5
