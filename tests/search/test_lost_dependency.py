"""A trial's dependency that an accident took away comes back, and no trial trains without it: the
warm start's saved nets deleted, truncated or damaged in place are trained again (issue 23, item 1);
an artefact store that loses every copy stops the worker with one line, and nothing is lost.

The single-task reference needs no test of its own here: trials read its metrics from the study's
database (``single_metrics``), never from an artefact, and its failures go through ``wait_for``."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
from helpers import finished, jobs, tiny_recipe
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import TrialState
from typer.testing import CliRunner

from fusionsearch.cli import app
from fusionsearch.errors import LostDependencyError
from fusionsearch.search import StudySettings, prepare_study, run_worker
from fusionsearch.search.recovery import MAX_RETRY, failure_kind
from fusionsearch.search.storage import artifact_dir

runner = CliRunner()


def _settings(url: str, trials: int) -> StudySettings:
    return StudySettings(study="r", storage=url, trials=trials, baselines=["single"], pruner="none")


def _warm(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if t.user_attrs.get("baseline") == "warmstart"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """A study whose first ``run --trials 1`` finished (warm start, single, slot 0), trained once."""
    d = tmp_path_factory.mktemp("first")
    url = f"sqlite:///{d}/a.db"
    prepare_study(tiny_recipe(), _settings(url, 1))
    run_worker("r", url, device="cpu")
    return d


@pytest.fixture
def study_after_first_run(first_run, tmp_path) -> tuple[str, optuna.Study, Path]:
    """A copy of ``first_run`` (database and artefact folder), the URL, the study, and the file
    that holds the warm start's nets."""
    d = tmp_path / "study"
    shutil.copytree(first_run, d)
    url = f"sqlite:///{d}/a.db"
    study = optuna.load_study(study_name="r", storage=url)
    (warm,) = _warm(study)
    return url, study, artifact_dir(url) / warm.user_attrs["model_artifact"]


def _damage(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(b"PK\x03\x04")
    else:  # same length, zeros in the middle of the weights: torch.load reads it without a complaint
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(64)
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["deleted", "truncated", "damaged"])
def test_a_lost_warm_start_is_trained_again_and_every_slot_completes(study_after_first_run, how):
    url, study, path = study_after_first_run
    _damage(path, how)
    lines: list[str] = []
    prepare_study(tiny_recipe(), _settings(url, 2))  # `run --trials 2`: the same command, one slot more
    run_worker("r", url, device="cpu", log=lines.append)
    assert sorted(jobs(finished(study))) == ["single", "slot0", "slot1", "warmstart", "warmstart"]
    assert [t.number for t in study.get_trials() if t.state == TrialState.FAIL] == []  # no slot lost, no plan blamed
    old, new = _warm(study)
    assert new.user_attrs["replaces"] == old.number
    assert new.user_attrs["metrics"] == old.user_attrs["metrics"]  # the study seed: the same nets again
    assert (artifact_dir(url) / new.user_attrs["model_artifact"]).is_file()
    # the slot waited for the retrained warm start and only then trained (never on the broken file)
    n = next(t.number for t in study.get_trials() if t.user_attrs.get("slot") == 1)
    said = [f"trial {n}: started", "warmstart (trial 0) cannot be read from", "warmstart: started", "warmstart: done"]
    assert [line.startswith(s) for line, s in zip(lines, [*said, f"trial {n}: done"])] == [True] * 5, lines
    prepare_study(tiny_recipe(), _settings(url, 2))
    assert run_worker("r", url, device="cpu") == 0  # nothing left over, and no third warm start
    assert len(_warm(study)) == 2


def test_a_store_that_keeps_losing_the_warm_start_stops_with_one_line_and_loses_nothing(
    study_after_first_run, monkeypatch
):
    url, study, path = study_after_first_run
    path.unlink()

    def lost(**kw):
        raise ArtifactNotFound("not found")

    monkeypatch.setattr(optuna.artifacts, "download_artifact", lost)  # every copy it is given vanishes
    prepare_study(tiny_recipe(), _settings(url, 2))
    result = runner.invoke(app, ["worker", "--study", "r", "--storage", url, "--device", "cpu", "--quiet"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert str(artifact_dir(url)) in lines[0] and "run the same command again" in lines[0]
    assert len(_warm(study)) == 1 + MAX_RETRY  # retrained, a bounded number of times
    slot = [t for t in study.get_trials() if t.user_attrs.get("slot") == 1]
    assert [t.state for t in slot] == [TrialState.FAIL, TrialState.WAITING]  # queued again: nothing lost
    assert slot[0].user_attrs["fail_kind"] == "dependency"
    with pytest.raises(LostDependencyError):  # the same from Python
        run_worker("r", url, device="cpu")
    monkeypatch.undo()  # the store is fixed
    prepare_study(tiny_recipe(), _settings(url, 2))
    run_worker("r", url, device="cpu")
    assert sorted(set(jobs(finished(study)))) == ["single", "slot0", "slot1", "warmstart"]
    assert all(t.user_attrs.get("fail_kind") != "plan" for t in study.get_trials() if t.state == TrialState.FAIL)


def test_an_artefact_the_store_lost_is_an_accident_not_the_plans_fault():
    assert failure_kind(ArtifactNotFound("not found")) == "infrastructure"
