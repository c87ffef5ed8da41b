"""``train.max_memory`` below what fused plans need: those plans fail as "does not fit" before
any step (the plan's own failure, not queued again), the rest train, the study finishes, and the
leaderboard shows the reason."""

from __future__ import annotations

from helpers import tiny_recipe
from rich.console import Console

from fusionsearch.report.leaderboard import trial_rows, trials_table
from fusionsearch.search import StudySettings, run_study
from fusionsearch.search.records import TrialRecord

LIMIT_GIB = 0.016  # the tiny single-task columns fit (about 14 MiB predicted), an NDDR plan does not (19 MiB)


def test_plans_over_max_memory_fail_as_does_not_fit_without_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = tiny_recipe()
    r.train = {**r.train, "max_memory": LIMIT_GIB}
    r.study = {"trials": 3, "pruner": "none"}
    r.confirm = {"top": 1, "seeds": 0}
    settings = StudySettings.from_recipe(r, storage=f"sqlite:///{tmp_path}/s.db")
    done = run_study(r, settings, ["cpu"], quiet=True, log=lambda _: None, note=lambda _: None)
    trials = done.study.get_trials()
    refused = [t for t in trials if (TrialRecord(t).fail_reason or "").startswith("does not fit: needs ")]
    assert refused and not done.failed_workers
    for t in refused:
        record = TrialRecord(t)
        assert t.state.name == "FAIL" and record.fail_kind == "plan" and record.step is None  # never trained
        assert "GiB, has 0.02 GiB (train.max_memory" in (record.fail_reason or "")
    assert not any(t.system_attrs.get("failed_trial") in {u.number for u in refused} for t in trials)  # no retry
    assert any(t.state.name == "COMPLETE" for t in trials)  # what fits still trains
    reasons = {row["reason"] for row in trial_rows(done.study)}
    assert any(str(reason).startswith("does not fit") for reason in reasons)
    console = Console(record=True, width=300)
    console.print(trials_table(done.study))
    assert "does not fit" in console.export_text()
