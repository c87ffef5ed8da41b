"""The rules the command line used to hold, tested in the library (issue 21, thin CLI): the
settings from a recipe (two tasks, the sampler for several objectives, the default name), a
whole study in one call, the comparison's settings, and the atomic export of the best net."""

from __future__ import annotations

import os

import pytest
from helpers import grid_recipe, tiny_recipe

from fusionsearch.errors import ArgumentError, FusionSearchError
from fusionsearch.report import comparison_settings, export_best
from fusionsearch.search import StudySettings, prepare_study, run_study


def test_settings_from_a_recipe_take_its_study_section_and_the_overrides():
    r = tiny_recipe()
    r.study = {"trials": 5, "pruner": "median", "seed": 7}
    s = StudySettings.from_recipe(r)
    assert (s.study, s.trials, s.pruner, s.seed, s.sampler) == ("quick-test_resnet-seg-normal", 5, "median", 7, "tpe")
    assert (s.confirm_top, s.confirm_seeds) == (1, 3)  # the recipe's confirm section
    s = StudySettings.from_recipe(r, trials=1, pruner="none", seed=0, study="mine", confirm_seeds=0)
    assert (s.study, s.trials, s.pruner, s.seed, s.confirm_seeds) == ("mine", 1, "none", 0, 0)


def test_several_objectives_switch_tpe_to_nsga2_unless_tpe_is_asked_for():
    r = tiny_recipe()
    assert StudySettings.from_recipe(r, objectives=["delta_m", "params"]).sampler == "nsga2"
    r.study = {"sampler": "tpe"}  # the recipe's own choice is a default too
    assert StudySettings.from_recipe(r, objectives=["delta_m", "params"]).sampler == "nsga2"
    assert StudySettings.from_recipe(r, objectives=["delta_m", "params"], sampler="tpe").sampler == "tpe"
    assert StudySettings.from_recipe(r, objectives=["delta_m"]).sampler == "tpe"


def test_another_labelling_is_another_default_study():
    s = StudySettings.from_recipe(tiny_recipe(), labelled={"seg": 0.1, "normal": "ids/half.txt"})
    assert s.study == "quick-test_resnet-seg-normal-labelled-seg0.1-normal-half"


def test_grid_trials_count_the_grid():
    r = grid_recipe(["layer1", "layer4"])
    r.study = {"trials": "grid", "sampler": "grid"}
    s = StudySettings.from_recipe(r)
    assert s.sampler == "grid" and s.trials == 2  # NDDR's two inits


def test_one_task_is_refused_by_the_settings_and_by_prepare_study(tmp_path):
    r = tiny_recipe().with_overrides(tasks=["seg"])
    with pytest.raises(ArgumentError, match="fusion needs at least 2 tasks, the study has 1 \\(seg\\)"):
        StudySettings.from_recipe(r)
    url = f"sqlite:///{tmp_path}/s.db"
    with pytest.raises(ArgumentError, match="at least 2 tasks"):
        prepare_study(r, StudySettings(study="s", storage=url))
    assert not (tmp_path / "s.db").exists()  # refused before the storage was made


def test_a_task_the_data_set_does_not_label_is_refused_before_the_study():
    r = tiny_recipe().with_overrides(tasks=["seg", "age"])
    with pytest.raises(FusionSearchError, match="has labels for .* not \\['age'\\]"):
        StudySettings.from_recipe(r)


def test_comparison_settings_make_every_row_a_baseline_without_pruning():
    r = tiny_recipe()
    s = comparison_settings(r, trials=1, confirm_seeds=0)
    assert s.baselines[0] == "single" and len(s.baselines) == len(set(s.baselines)) > 1
    assert (s.pruner, s.trials, s.confirm_seeds, s.study) == ("none", 1, 0, "quick-compare")


@pytest.mark.slow
def test_run_study_searches_confirms_resumes_and_exports_the_best(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = tiny_recipe()
    r.study = {"trials": 1, "pruner": "none"}
    r.confirm = {"top": 1, "seeds": 1}
    settings = StudySettings.from_recipe(r, storage=f"sqlite:///{tmp_path}/s.db")
    said: list[str] = []
    done = run_study(r, settings, ["cpu"], quiet=True, log=said.append, note=said.append)
    assert said[0] == f"study {settings.study} in sqlite:///{tmp_path}/s.db: 1 trials + baselines"
    assert any(line.startswith("confirmation: ") and "1 fresh seeds" in line for line in said)
    assert done.confirmation.plans and not done.failed_workers
    states = {t.state.name for t in done.study.get_trials()}
    assert states <= {"COMPLETE", "PRUNED"}
    again: list[str] = []
    run_study(r, settings, ["cpu"], quiet=True, log=again.append, note=again.append)
    assert any(line.startswith("resuming: ") for line in again)
    assert not any(line.startswith("confirmation: ") for line in again)  # nothing left to queue
    # the export: a complete file that loads, permissions kept, a write-protected target refused
    out = tmp_path / "best.pt"
    out.write_bytes(b"old")
    os.chmod(out, 0o640)
    exported = export_best(settings.study, out, settings.storage)
    assert exported.path == out and out.stat().st_size > 1000 and (out.stat().st_mode & 0o777) == 0o640
    assert "confirmed Delta-m" in exported.describe() and str(out) in exported.describe()
    os.chmod(out, 0o444)
    with pytest.raises(FusionSearchError, match="write-protected"):
        export_best(settings.study, out, settings.storage, flag="--out")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
