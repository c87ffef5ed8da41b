"""``fusionsearch data check``, ``train`` and ``run`` on a user's folder (issue 31): the same folder
serves all three, and a malformed one is one line and exit 2 from each, with nothing stored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from folder_fixture import write_folder
from typer.testing import CliRunner

from fusionsearch.cli import app

runner = CliRunner()


def _recipe(tmp_path: Path, root: Path, tasks: str = "[seg, quality, shade]") -> Path:
    path = tmp_path / "folder.yaml"
    path.write_text(
        f"backbone: test_resnet\ntasks: {tasks}\n"
        f"data: {{name: folder, root: {root}, size: 32}}\n"
        "train: {steps: 4, batch_size: 2, base_lr: 0.002, optimizer: adamw, eval_every: 2}\n"
        "plan: {at: boundaries, unit: nddr, unit_args: {init: [0.9, 0.1]}}\n"
        "search: {points: boundaries, column_init: single, finetune_steps: 2, units: [none, nddr, cross_stitch]}\n"
        "study: {trials: 2, sampler: tpe, pruner: none, seed: 0}\nconfirm: {seeds: 0}\n"
    )
    return path


def test_data_check_prints_per_task_and_per_split(tmp_path):
    root = write_folder(tmp_path / "data")
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 0, result.output
    for text in ("seg/", "labels.csv", "shade", "depth", "quality", "3/4", "bad: 2, good: 2", "no problems found"):
        assert text in result.output, text
    assert "seg: 3 classes read from the labels" in result.output


def test_data_check_lists_every_problem_and_exits_2(tmp_path):
    root = write_folder(tmp_path / "data")
    (root / "seg" / "zz.png").write_bytes((root / "seg" / "a0.png").read_bytes())
    (root / "images" / "a0.jpg").write_bytes(b"not a jpeg")
    (root / "shade" / "a1.png").write_bytes(b"\x89PNG truncated")
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 2, result.output
    problems = [line for line in result.output.splitlines() if line.startswith("problem: ")]
    assert any("orphan label seg/zz.png" in p for p in problems)
    assert any("id 'a0' has two image files" in p for p in problems)
    assert any("shade/a1.png" in p and "cannot read" in p for p in problems)
    assert (
        result.output.strip().splitlines()[-1].startswith("error: ") and "4 problem(s)" in result.output
    )  # the duplicate id, the orphan, and two unreadable files (a0.jpg is the one kept)
    assert "Traceback" not in result.output
    missing = runner.invoke(app, ["data", "check", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_train_on_a_folder(tmp_path):
    root = write_folder(tmp_path / "data")
    args = ["train", "--recipe", str(_recipe(tmp_path, root)), "--steps", "2", "--eval-every", "2"]
    result = runner.invoke(app, [*args, "--labelled", "quality=0.5"])
    assert result.exit_code == 0, result.output
    assert "quality on 2 of 4 training images" in result.output
    assert "seg: 3 classes read from the labels" in result.output  # the loader says so
    for text in ("miou", "accuracy", "rmse"):
        assert text in result.output
    again = runner.invoke(app, ["train", "--data", f"folder:{root}", "--tasks", "seg,attr", "--backbone", "test_resnet",
                                "--size", "32", "--steps", "2", "--batch-size", "2"])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert "map" in again.output and "mean_acc" in again.output


def test_a_malformed_folder_stops_train_and_run_before_anything_is_stored(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "data")
    recipe = _recipe(tmp_path, root)
    (root / "labels.csv").write_text("id,quality\na0,good\na0,bad\n")
    monkeypatch.chdir(tmp_path)
    for cmd in (["train", "--recipe", str(recipe)], ["run", "--recipe", str(recipe), "--quiet"]):
        result = runner.invoke(app, cmd)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "labels.csv line 3" in lines[0], lines
    assert not (tmp_path / "fusionsearch.db").exists() and not (tmp_path / "fusionsearch-artifacts").exists()


@pytest.mark.slow
def test_run_on_a_folder_with_two_workers(tmp_path):
    root = write_folder(tmp_path / "data")
    recipe = _recipe(tmp_path, root)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "fusionsearch.cli",
        "run",
        "--recipe",
        str(recipe),
        "--workers",
        "2",
        "--devices",
        "cpu",
    ]
    out = subprocess.run([*cmd, "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    study = optuna.load_study(
        study_name="folder-test_resnet-seg-quality-shade", storage=f"sqlite:///{tmp_path}/fusionsearch.db"
    )
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == len(states) == 6, states  # warm start, 3 baselines, 2 trials
    assert set(study.trials[-1].user_attrs["metrics"]) == {"seg", "quality", "shade"}


def test_tasks_given_on_the_command_line_drop_the_recipes_settings_for_other_tasks():
    from fusionsearch.cli.options import load_recipe_with

    r = load_recipe_with("positive_control", None, "seg,depth", None, None)
    assert r.tasks == ["seg", "depth"] and set(r.task_args) <= {"seg", "depth"}
    assert set(r.search.get("loss_weights") or {}) <= {"seg", "depth"}
    q = load_recipe_with("quick", None, "seg,quality", f"folder:{write_folder_once()}", None)
    assert q.search["loss_weights"] == {} and q.task_types() == {"quality": "cls"}


def write_folder_once() -> Path:
    import tempfile

    return write_folder(Path(tempfile.mkdtemp(prefix="fusionsearch-folder-")))
