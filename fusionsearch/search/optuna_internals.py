"""Every use of a private Optuna name, in one place: an Optuna release may rename or drop any of
them without notice, and this module is where to look when one does.

Checked on Optuna 4.9.0 (pyproject's lower bound, read in its source) and 5.1.0 (installed when
written); ``CHECKED_ON`` says so to the code. ``PRIVATE_NAMES`` lists each private name relied on,
with its owner and what fusionsearch does with it, and ``missing_private_names`` looks each up in
the installed Optuna (``tests/search/test_optuna_internals.py`` fails when one is gone).

Why they are needed: our workers take queued trials themselves instead of running
``study.optimize``, so they do by hand what Optuna does privately there. ``queueing.pop`` mirrors
``Study._pop_waiting_trial_id`` (in our order, under our lock) and ``queueing.Heartbeat`` mirrors
``optuna.storages._heartbeat.get_heartbeat_thread``, whose thread runs only inside ``optimize``'s
trial loop; both need a study's storage and a trial's id, which Optuna keeps private. The storage
lock needs the file or URL behind an opened storage, and the all-or-nothing artefact store needs the
path Optuna's file store gives an artefact. Neither mirrored function is called, so neither is listed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "CHECKED_ON",
    "PrivateName",
    "PRIVATE_NAMES",
    "missing_private_names",
    "storage_of",
    "trial_id_of",
    "claim",
    "wrapped_storage",
    "journal_file",
    "artifact_path",
]

CHECKED_ON = ("4.9.0", "5.1.0")


@dataclass(frozen=True)
class PrivateName:
    """A private attribute of an Optuna class that fusionsearch reads (instance attributes too)."""

    owner: str  # the class, by the dotted name Optuna's users reach it under
    name: str
    use: str  # what fusionsearch does with it, and through which function here


PRIVATE_NAMES: tuple[PrivateName, ...] = (
    PrivateName("optuna.study.Study", "_storage", "the storage: queue lock, heartbeats, claims (storage_of)"),
    PrivateName("optuna.trial.Trial", "_trial_id", "the id the storage knows a running trial by (trial_id_of)"),
    PrivateName("optuna.trial.FrozenTrial", "_trial_id", "the id of a waiting trial, to claim it (claim)"),
    PrivateName("optuna.storages._CachedStorage", "_backend", "the RDBStorage behind the cache (wrapped_storage)"),
    PrivateName("optuna.storages.JournalStorage", "_backend", "the journal's log backend (wrapped_storage)"),
    PrivateName("optuna.storages.journal.JournalFileBackend", "_file_path", "the journal file (journal_file)"),
    PrivateName("optuna.artifacts.FileSystemArtifactStore", "_get_filepath", "an artefact's file (artifact_path)"),
)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes (behind Optuna's cache for RDB storages)."""
    storage: optuna.storages.BaseStorage = study._storage
    return storage


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    """The id the storage knows a trial by (not its number, which counts within the study)."""
    return int(trial._trial_id)


def claim(study: optuna.Study, frozen: FrozenTrial) -> optuna.Trial | None:
    """Make a WAITING trial RUNNING and hand it over, as ``Study._pop_waiting_trial_id`` does; None
    when another worker took it first or it finished meanwhile."""
    try:
        if storage_of(study).set_trial_state_values(trial_id_of(frozen), state=TrialState.RUNNING):
            return optuna.Trial(study, trial_id_of(frozen))
    except RuntimeError:  # finished meanwhile (Optuna's UpdateFinishedTrialError)
        pass
    return None


def wrapped_storage(storage: Any) -> Any | None:
    """What an Optuna storage wraps: the RDBStorage behind ``_CachedStorage``, the log backend
    behind ``JournalStorage``; None for a storage that wraps nothing."""
    return getattr(storage, "_backend", None)


def journal_file(backend: Any) -> str | None:
    """The file of a ``JournalFileBackend``; None for any other object (None included)."""
    return getattr(backend, "_file_path", None)


def artifact_path(store: FileSystemArtifactStore, artifact_id: str) -> Path:
    """Where Optuna's file store keeps an artefact (it refuses an id that leaves its folder)."""
    path: Path = store._get_filepath(artifact_id)
    return path


def missing_private_names(samples: Mapping[str, object] | None = None) -> list[str]:
    """``owner.name`` of each entry of ``PRIVATE_NAMES`` that the installed Optuna lacks; empty when
    all are there. Instance attributes are looked up on real objects (``samples`` replaces them:
    a mapping from each owner to an object standing for it)."""
    if samples is not None:
        return [f"{p.owner}.{p.name}" for p in PRIVATE_NAMES if not hasattr(samples[p.owner], p.name)]
    with _samples() as real:
        return missing_private_names(real)


@contextmanager
def _samples() -> Iterator[dict[str, object]]:
    """One object of each owning class, made the way fusionsearch makes them (quietly: Optuna
    logs each new study)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with tempfile.TemporaryDirectory() as folder:
            study = optuna.create_study()
            trial = study.ask()
            backend = JournalFileBackend(str(Path(folder) / "journal.log"))
            yield {
                "optuna.study.Study": study,
                "optuna.trial.Trial": trial,
                "optuna.trial.FrozenTrial": study.get_trials(deepcopy=False)[0],
                "optuna.storages._CachedStorage": optuna.storages.get_storage(
                    optuna.storages.RDBStorage("sqlite:///:memory:")
                ),
                "optuna.storages.JournalStorage": optuna.storages.JournalStorage(backend),
                "optuna.storages.journal.JournalFileBackend": backend,
                "optuna.artifacts.FileSystemArtifactStore": FileSystemArtifactStore(folder),
            }
    finally:
        optuna.logging.set_verbosity(verbosity)
