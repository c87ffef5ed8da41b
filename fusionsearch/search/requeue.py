"""Queueing a failed trial again: a copy with the same plan and the same identity, carrying
Optuna's ``failed_trial`` / ``retry_history`` bookkeeping, at most ``recovery.MAX_RETRY`` times.
Which failures deserve it is ``recovery``'s call; ``queueing.requeue_failed`` runs this for every
accident under the queue's lock, and the storage's heartbeat calls ``retry`` for a dead worker's
trial.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from fusionsearch.search.jobs import queued_copy
from fusionsearch.search.records import TrialRecord
from fusionsearch.search.recovery import FREE_RETRY, MAX_RETRY, RETRYABLE

__all__ = ["retry", "retries_left", "retried", "failed_for_good"]


def _history(t: FrozenTrial) -> list[int]:
    return list(t.system_attrs.get("retry_history", []))


def _free(t: FrozenTrial) -> int:
    """How many of the failures in ``t``'s history were of a kind that costs no retry (``FREE_RETRY``)."""
    return int(t.system_attrs.get("fusionsearch_free_retries", 0))


def retries_left(t: FrozenTrial) -> bool:
    """Whether a failed trial may be copied once more: its history holds earlier copies, of
    which those after a ``FREE_RETRY`` accident (a full disk) do not count."""
    return TrialRecord(t).fail_kind in FREE_RETRY or len(_history(t)) - _free(t) < MAX_RETRY


def retry(study: optuna.Study, t: FrozenTrial) -> bool:
    """Queue a copy of the failed trial ``t`` (same plan, same identity); False when its retries
    are used up. The copy carries Optuna's ``failed_trial``/``retry_history`` bookkeeping."""
    if not retries_left(t):
        return False
    system_attrs: dict[str, Any] = {
        **t.system_attrs,
        "failed_trial": t.number,
        "retry_history": [*_history(t), t.number],
        "fusionsearch_free_retries": _free(t) + (TrialRecord(t).fail_kind in FREE_RETRY),
    }
    study.add_trial(queued_copy(t, system_attrs))
    return True


def retried(trials: list[FrozenTrial]) -> set[int]:
    """The numbers of the failed trials that a copy stands in for."""
    return {n for t in trials for n in _history(t)}


def failed_for_good(t: FrozenTrial, trials: list[FrozenTrial]) -> bool:
    """A failure that will not come back: the plan's own, or an accident out of retries."""
    if t.state != TrialState.FAIL:
        return False
    if t.number in retried(trials):
        return False  # a copy stands in for it
    return TrialRecord(t).fail_kind not in RETRYABLE or not retries_left(t)
