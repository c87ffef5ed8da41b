"""Values that pass every type check but no run can use (issue 34, items 5, 6 and 9): each is one
line and exit 2 before any work, naming the option or the recipe's field, and leaves no file."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from helpers import tiny_recipe
from typer.testing import CliRunner

from fusionsearch.cli import app
from fusionsearch.errors import FusionSearchError, PlanError
from fusionsearch.experiment.experiment import Experiment
from fusionsearch.experiment.recipe import RecipeError, load_recipe
from fusionsearch.tasks.weighting import WEIGHTINGS, GradientWeighting, make_weighting
from fusionsearch.tasks.weighting.gradient import torchjd_aggregator
from fusionsearch.train.config import TrainConfig

runner = CliRunner()

TINY = "backbone: test_resnet\ndata: {name: synthetic, size: 32, train_length: 8, val_length: 4}\n"


def _weighting(name: str, args: str) -> str:
    return f"{TINY}train: {{weighting: {{name: {name}, args: {args}}}}}\n"


# item 5: values that reached torch or TorchJD (exit 1, "internal error", or at the first step)
ARGUMENTS = {
    "famo_gamma": (_weighting("famo", "{gamma: 1.0e+300}"), "train.weighting.args.gamma must be in [0, 10]"),
    "famo_w_lr": (_weighting("famo", "{w_lr: 1.0e+300}"), "train.weighting.args.w_lr must be in (0, 10]"),
    "uncertainty_init": (_weighting("uncertainty", "{init: 1.0e+300}"), "train.weighting.args.init must be in"),
    "projector": (_weighting("upgrad", "{projector: x}"), "unknown argument train.weighting.args.projector"),
    "pref_word": (_weighting("upgrad", "{pref_vector: x}"), "train.weighting.args.pref_vector must be a list"),
    "pref_length": (_weighting("upgrad", "{pref_vector: [1, 2, 3]}"), "must be a list of 2 numbers >= 0 (one per"),
    "pref_mapping": (_weighting("aligned_mtl", "{pref_vector: {a: 1}}"), "train.weighting.args.pref_vector must be"),
    "pref_zero": (_weighting("aligned_mtl", "{pref_vector: [0, 0]}"), "not all 0"),
    "mgda_iters": (_weighting("mgda", "{max_iters: 1000000000}"), "train.weighting.args.max_iters must be in"),
    "dbmtl_sigma": (_weighting("dbmtl", "{sigma: 1.0e+300}"), "train.weighting.args.sigma must be in [0, 10]"),
}
# item 6: well typed, huge: a hang, an 8 GB allocation, memory growing without bound
SIZES = {
    "batch_size": (f"{TINY}train: {{batch_size: 1000000000}}\n", "train.batch_size 1,000,000,000 is too large"),
    "val_length": ("data: {name: synthetic, val_length: 1000000000}\n", "data.val_length 1,000,000,000 is over"),
    "train_length": ("data: {name: synthetic, train_length: 1000000000}\n", "data.train_length 1,000,000,000 is over"),
    "calibration": (
        f"{TINY}train: {{bn_calibration_batches: 1000000000}}\n",
        "train.bn_calibration_batches 1,000,000,000 is too large",
    ),
}


def _one_line(result, message: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], (result.exit_code, result.output)
    assert lines[0].startswith("error:") and "Traceback" not in result.output


@pytest.mark.parametrize("case", [*ARGUMENTS, *SIZES])
def test_a_value_no_run_can_use_is_refused_when_the_recipe_loads(tmp_path, monkeypatch, case):
    text, message = {**ARGUMENTS, **SIZES}[case]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(RecipeError, match="recipe 'r': "):
        load_recipe(tmp_path / "r.yaml")  # the library refuses it, not only the command line
    _one_line(runner.invoke(app, ["run", "--recipe", str(tmp_path / "r.yaml")]), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_a_worker_index_beyond_the_samplers_seeds_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/none.db"
    for index in ("4294967296", "-1"):
        result = runner.invoke(app, ["worker", "--study", "x", "--storage", url, "--worker-index", index])
        _one_line(result, "--worker-index must be in 0..1,000,295")


def test_a_per_task_vector_has_one_entry_per_task():
    three = {"name": "upgrad", "args": {"pref_vector": [1, 1, 2]}}
    recipe = tiny_recipe().with_overrides(tasks=["seg", "normal", "depth"], train={"weighting": three})
    with pytest.raises(RecipeError, match="one per task: seg, normal"):
        recipe.with_overrides(tasks=["seg", "normal"])  # the recipe's vector against fewer tasks
    with pytest.raises(PlanError, match="pref_vector must be a list of 2 numbers"):
        make_weighting(three, ["a", "b"])
    assert make_weighting(three, ["a", "b", "c"]).aggregator is not None


def test_a_commands_override_is_bounded_like_the_recipe():
    """``train --batch-size`` or a trial's own settings reach ``Experiment.train``, not the recipe."""
    exp = Experiment(tiny_recipe())
    huge = TrainConfig(steps=1, batch_size=10**9, progress=False)
    with pytest.raises(FusionSearchError, match="train.batch_size 1,000,000,000 is too large"):
        exp.train(exp.baseline_plan("single"), cfg=huge, device="cpu")


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_every_methods_declaration_matches_what_it_calls(name):
    """Each built-in method declares its arguments; each is one its constructor (and TorchJD's
    aggregator) takes, and the ranges a search draws lie inside the declared bounds."""
    from fusionsearch.tasks.weighting.arguments import Number

    cls = WEIGHTINGS.get(name)
    assert cls.arguments is not None
    takes = set(inspect.signature(cls).parameters)
    if issubclass(cls, GradientWeighting):
        takes |= set(inspect.signature(cls.aggregator_from).parameters)
        if cls.torchjd:
            takes |= set(inspect.signature(torchjd_aggregator(cls.torchjd)).parameters)
    assert set(cls.arguments) <= takes - {"tasks", "seed", "args", "n_tasks"}
    for arg, (low, high) in cls.search_args.items():
        bound = cls.arguments[arg]
        assert isinstance(bound, Number)
        bound.check(low, arg, None)
        bound.check(high, arg, None)
    make_weighting(name, ["a", "b"])  # the defaults pass their own declaration


# item 9: an empty value fell back to the default silently. ``--devices gpu7`` makes the old code
# stop at once with another message instead of running a study
EMPTY = ["--mode", "--study", "--data", "--objectives", "--sampler", "--pruner", "--report", "--confirm-per"]
EMPTY += ["--artifacts", "--storage", "--tasks", "--recipe", "--labelled"]


@pytest.mark.parametrize("flag", EMPTY)
def test_an_empty_option_is_refused_like_any_bad_value(tmp_path, monkeypatch, flag):
    monkeypatch.chdir(tmp_path)
    for empty in ("", "  "):
        _one_line(runner.invoke(app, ["run", flag, empty, "--devices", "gpu7"]), f"{flag} is empty")
    assert not list(tmp_path.iterdir()), "no UUID folders, no database"


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--weighting", "", "--steps", "0"],
        ["train", "--out", "", "--steps", "0"],
        ["worker", "--study", ""],
        ["trials", "--study", ""],
        ["best", "--study", "x", "--out", ""],
        ["data", "check", "nowhere", "--plugin", ""],
    ],
)
def test_every_command_refuses_an_empty_option(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    flag = next(a for a, v in zip(args, args[1:]) if a.startswith("--") and v == "")
    _one_line(runner.invoke(app, args), f"{flag} is empty")


TRAIN = ["train", "--backbone", "test_resnet", "--size", "32", "--train-images", "4", "--val-images", "2"]
TRAIN += ["--batch-size", "2", "--steps", "1", "--eval-every", "1"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--labelled", "seg=0.1", "--labelled", "seg=0.5", "--devices", "gpu7"], "--labelled names 'seg'"),
        (["run", "--labelled", "seg=0.1,seg=ids.txt", "--devices", "gpu7"], "--labelled names 'seg'"),
        ([*TRAIN, "--loss-weight", "normal=2", "--loss-weight", "normal=3"], "--loss-weight names 'normal'"),
    ],
)
def test_a_per_task_option_names_each_task_once(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    _one_line(runner.invoke(app, args), f"{message} more than once")


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "---\n"])
def test_an_empty_recipe_file_is_refused(tmp_path, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.yaml").write_text(text)
    result = runner.invoke(app, ["run", "--recipe", "empty.yaml", "--devices", "gpu7"])
    _one_line(result, "empty.yaml must be a mapping of fields (name: value), got an empty file")
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["empty.yaml"]
