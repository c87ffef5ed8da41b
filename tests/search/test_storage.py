"""Storages: credentials, and every storage kind behind one contract."""

from __future__ import annotations

import pytest
from helpers import jobs, tiny_recipe
from optuna.trial import TrialState

from fusionsearch.search import StudySettings, prepare_study
from fusionsearch.search.storage import redact


def test_passwords_are_never_printed():
    assert redact("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"


STORAGE_MODES = ["sqlite", "journal", "postgresql"]  # as Optuna's tests' STORAGE_MODES


@pytest.fixture(params=STORAGE_MODES)
def storage_url(request, tmp_path, monkeypatch):
    """Every storage kind fusionsearch supports, behind one URL."""
    monkeypatch.chdir(tmp_path)  # artefacts of server storages go to ./fusionsearch-artifacts
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    if request.param == "journal":
        return f"journal:{tmp_path}/s.log"
    return request.getfixturevalue("postgres")


def test_every_storage_queues_once_pops_in_order_and_requeues_accidents(storage_url):
    from fusionsearch.search.queueing import pop, requeue_failed
    from fusionsearch.search.recovery import INTERRUPTED

    settings = StudySettings(study="st", storage=storage_url, trials=2)
    study = prepare_study(tiny_recipe(), settings)
    prepare_study(tiny_recipe(), settings)  # the same command again adds nothing
    assert sorted(jobs(study.get_trials())) == ["nddr_default", "shared", "single", "slot0", "slot1", "warmstart"]
    order = []
    while (trial := pop(study)) is not None:
        order.append(trial.user_attrs.get("baseline") or f"slot{trial.user_attrs['slot']}")
        if order[-1] == "slot1":
            trial.set_user_attr("fail_kind", INTERRUPTED)
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, 0.0)
    assert order[:2] == ["warmstart", "single"] and order[-2:] == ["slot0", "slot1"]
    assert requeue_failed(study) == 1 and requeue_failed(study) == 0  # one copy, once
    copy = pop(study)
    assert copy is not None and copy.user_attrs["slot"] == 1 and "fail_kind" not in copy.user_attrs
    assert redact(storage_url) == storage_url  # no password in these URLs: nothing to hide
