"""The work queue inside a study: which trial a worker takes next, how it takes it, and how it
shows it is alive.

Each piece mirrors an Optuna function that works for ``study.optimize`` but not for workers that
only pop queued trials: ``pop`` is Optuna's private pop of a waiting trial (in our order, under the
storage's lock), ``Heartbeat`` is Optuna's private heartbeat thread, ``reap_stale`` is
``optuna.storages.fail_stale_trials``. The heartbeat is our own thread because Optuna's is private
and only runs inside ``study.optimize``'s trial loop, while our workers claim and ``tell`` trials
themselves. What they need of Optuna's internals goes through ``optuna_internals``.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from fusionsearch.interrupts import interrupts_deferred
from fusionsearch.search.context import Reference
from fusionsearch.search.jobs import Job, is_reference
from fusionsearch.search.optuna_internals import claim, storage_of
from fusionsearch.search.records import TrialRecord
from fusionsearch.search.recovery import RETRYABLE
from fusionsearch.search.requeue import retried, retry
from fusionsearch.search.seeding import job_number
from fusionsearch.search.storage import HEARTBEAT_INTERVAL, queue_lock

__all__ = [
    "single_metrics",
    "requeue_failed",
    "reap_stale",
    "heartbeat_interval",
    "find",
    "pop",
    "Heartbeat",
    "stale_possible",
]


def find(study: optuna.Study, match: Callable[[Any], bool], newest: bool = False) -> tuple[Any, bool]:
    """The complete trial that ``match`` picks (the first, or with ``newest`` the last: a warm start
    trained again because its artefact was lost stands in for the older one), and whether one may
    still come (queued or running)."""
    pending = False
    trials = study.get_trials(deepcopy=False)
    for t in reversed(trials) if newest else trials:
        if match(t):
            if t.state == TrialState.COMPLETE:
                return t, False
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                pending = True
    return None, pending


def single_metrics(
    study: optuna.Study, confirm: bool = False, seed: int | None = None
) -> tuple[dict[str, Any] | None, bool]:
    """The single-task reference's final metrics and its evaluations, and whether it may still
    come: the ``single`` baseline in the search, the confirmation's ``single`` with the same seed
    in the confirmation."""
    t, pending = find(study, is_reference(Reference(confirm, seed)))
    if t is None:
        return None, pending
    record = TrialRecord(t)
    return {"metrics": record.metrics, "evals": record.evals or []}, False


class Heartbeat:
    """Records the trial's heartbeat in the storage while it runs (Optuna's own thread is tied to
    ``study.optimize``, which creates trials; our workers only pop queued ones)."""

    def __init__(self, storage: Any, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if heartbeat_interval(self.storage):
            self.storage.record_heartbeat(self.trial_id)
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.wait(heartbeat_interval(self.storage) or HEARTBEAT_INTERVAL):
            with contextlib.suppress(Exception):  # a missed beat is retried on the next tick
                self.storage.record_heartbeat(self.trial_id)

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def pop(study: optuna.Study, match: Callable[[Any], bool] | None = None) -> optuna.Trial | None:
    """Take one WAITING trial (atomically: a trial another worker took is skipped) in its job's
    ``queue_rank`` order, then by job (a copy queued again runs in its first attempt's place, so the trials
    after it see the history they would have seen without the accident); with ``match``, only a
    trial it picks."""
    # claimed here, then stopped before the worker holds it: RUNNING for ever, with no heartbeat
    with interrupts_deferred(), queue_lock(storage_of(study)):
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        waiting = sorted(waiting, key=lambda t: (Job.of(t).queue_rank, job_number(study, t)))
        if match is not None:
            waiting = [t for t in waiting if match(t)]
        for t in waiting:
            trial = claim(study, t)  # None: another worker took it, or it finished meanwhile
            if trial is not None:
                return trial
    return None


def reap_stale(study: optuna.Study) -> None:
    """Fail trials whose worker stopped beating; Optuna's retry callback queues a copy of each."""
    if heartbeat_interval(storage_of(study)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


def stale_possible(study: optuna.Study) -> bool:
    """Whether some RUNNING trial could still turn out to be a dead worker's (heartbeats on)."""
    return heartbeat_interval(storage_of(study)) is not None


def heartbeat_interval(storage: Any) -> int | None:
    """The storage's heartbeat interval (RDB storages, also behind Optuna's cache), or None."""
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get is not None else None


def requeue_failed(study: optuna.Study) -> int:
    """Queue again every failed trial whose failure was an accident (see the module docstring)
    and that has no copy yet; returns how many. Safe from many processes at once: it runs under
    the storage's lock, and a trial with a copy is never copied again."""
    added = 0
    with queue_lock(storage_of(study)):
        trials = study.get_trials(deepcopy=False)
        done = retried(trials)
        for t in trials:
            if (
                t.state == TrialState.FAIL
                and TrialRecord(t).fail_kind in RETRYABLE
                and t.number not in done
                and retry(study, t)
            ):
                added += 1
    return added
