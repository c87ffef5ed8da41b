"""Optuna's private names (``search.optuna_internals``): each one fusionsearch relies on is in the
installed Optuna, the check notices one that is gone, the adapter's functions reach the right
objects, and no other module of the package names a private Optuna name."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from fusionsearch.search.optuna_internals import (
    CHECKED_ON,
    PRIVATE_NAMES,
    artifact_path,
    claim,
    journal_file,
    missing_private_names,
    storage_of,
    trial_id_of,
    wrapped_storage,
)
from fusionsearch.search.storage import open_storage, storage_url

PKG = Path(__file__).resolve().parents[2] / "fusionsearch"
optuna.logging.set_verbosity(optuna.logging.ERROR)


def test_the_installed_optuna_has_every_private_name_relied_on():
    assert missing_private_names() == [], f"Optuna {optuna.__version__}: re-read optuna_internals ({CHECKED_ON=})"


def test_a_private_name_gone_from_optuna_is_reported(monkeypatch):
    monkeypatch.delattr(FileSystemArtifactStore, "_get_filepath")
    assert missing_private_names() == ["optuna.artifacts.FileSystemArtifactStore._get_filepath"]


def test_an_instance_attribute_gone_is_reported():
    names = {p.owner: {q.name: 1 for q in PRIVATE_NAMES if q.owner == p.owner} for p in PRIVATE_NAMES}
    samples = {owner: SimpleNamespace(**attrs) for owner, attrs in names.items()}
    assert missing_private_names(samples) == []
    samples["optuna.trial.Trial"] = SimpleNamespace()  # an Optuna whose trials keep their id elsewhere
    assert missing_private_names(samples) == ["optuna.trial.Trial._trial_id"]


def test_each_private_name_names_a_class_optuna_exports():
    for p in PRIVATE_NAMES:
        module, _, cls = p.owner.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), cls), type), p.owner
    assert len({(p.owner, p.name) for p in PRIVATE_NAMES}) == len(PRIVATE_NAMES)


def test_claim_takes_a_waiting_trial_once(tmp_path):
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=False))
    study.enqueue_trial({}, user_attrs={"slot": 0})
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    trial = claim(study, waiting)
    assert trial is not None and trial.number == waiting.number and trial_id_of(trial) == trial_id_of(waiting)
    assert storage_of(study).get_trial(trial_id_of(trial)).state == TrialState.RUNNING
    assert claim(study, waiting) is None  # taken already
    study.tell(trial, 1.0)
    assert claim(study, waiting) is None  # finished


def test_the_storage_behind_the_cache_and_the_journal_file(tmp_path):
    db = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=False)
    study = optuna.create_study(storage=db)
    assert wrapped_storage(storage_of(study)) is db and wrapped_storage(db) is None
    assert storage_url(storage_of(study)) == f"sqlite:///{tmp_path / 's.db'}"
    journal = open_storage(f"journal:{tmp_path / 'j.log'}", heartbeat=False)
    assert journal_file(wrapped_storage(journal)) == str(tmp_path / "j.log")
    assert journal_file(None) is None


def test_artifact_path_stays_in_the_store(tmp_path):
    store = FileSystemArtifactStore(str(tmp_path))
    assert artifact_path(store, "abc") == tmp_path / "abc"
    with pytest.raises(ValueError):
        artifact_path(store, "../outside")


_PRIVATE = re.compile(
    r"\._storage\b|\._study_id\b|\._trial_id\b|_get_filepath|_pop_waiting_trial_id|optuna(\.\w+)*\._\w"
    r"|from optuna\._|[\"']_backend[\"']|[\"']_file_path[\"']|\b(study|trial|storage|store|backend)\._[a-z]"
)


def test_no_private_optuna_name_outside_the_adapter():
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "optuna_internals.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if _PRIVATE.search(line):
                found.append(f"{path.relative_to(PKG.parent)}:{n}: {line.strip()}")
    assert found == []


def test_the_grep_finds_what_it_must():
    for line in ("s = study._storage", "t._trial_id", "from optuna._imports import x", "optuna.storages._heartbeat"):
        assert _PRIVATE.search(line), line
    for line in ("self._store = 1", "space._check_choices()", "trial.number", "optuna.storages.RDBStorage"):
        assert not _PRIVATE.search(line), line
