"""Which failed trials come back, and how: a failure is the plan's verdict or the machine's accident.

A trial that diverged (NaN), ran out of memory, or holds a plan that cannot be built failed on its
merits: that is final, and the search learns from it. A trial that was interrupted (Ctrl-C,
SIGTERM), lost its worker (stale heartbeat), hit an I/O error or a full disk, or could not start
because a trial it needs was itself interrupted, says nothing about its plan. Such a trial is
queued again, as a copy with the same plan, by Optuna's own bookkeeping for retried trials
(``failed_trial`` and ``retry_history`` system attributes, as ``RetryHeartbeatStaleTrialCallback``
writes them), at most ``MAX_RETRY`` times, so a machine that always fails cannot loop for ever.
A warm start whose saved nets are missing or damaged is the same kind of accident: it is trained
again before the trial that needs it goes on (``Objective.warm_start``).
"""

from __future__ import annotations

import errno
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from .errors import DependencyError

__all__ = [
    "MAX_RETRY",
    "INTERRUPTED",
    "INFRASTRUCTURE",
    "DEPENDENCY",
    "PLAN",
    "DEVICE",
    "RETRYABLE",
    "sticky_device_error",
    "failure_kind",
    "interrupted",
    "retry",
    "requeue_failed",
    "retries_left",
]

MAX_RETRY = 2  # copies of one failed trial, as the heartbeat's retry callback allows
INTERRUPTED, INFRASTRUCTURE, DEPENDENCY, PLAN = "interrupted", "infrastructure", "dependency", "plan"
DEVICE = "device"  # a sticky CUDA error: the process's CUDA context is broken, not the plan
RETRYABLE = (INTERRUPTED, INFRASTRUCTURE, DEPENDENCY, DEVICE)
# CUDA errors after which every later call in the process fails too ("sticky": the context is
# corrupted until the process exits); CUDA's and cuBLAS's own wording
STICKY_CUDA_ERRORS = (
    "device-side assert",
    "illegal memory access",
    "illegal instruction",
    "misaligned address",
    "unspecified launch failure",
    "uncorrectable ECC error",
    "cudaErrorIllegalAddress",
    "cudaErrorLaunchFailure",
    "CUBLAS_STATUS_EXECUTION_FAILED",
)
# what identifies a trial's job; everything else a run wrote (metrics, step, reason) is not copied
IDENTITY = ("baseline", "confirm", "seed", "slot", "source", "keep_net", "replaces")


def interrupted(e: BaseException) -> bool:
    """Whether ``e`` is, or was caused by, Ctrl-C or SIGTERM: an interrupt that lands inside a
    database commit comes out as Optuna's ``StorageInternalError`` with the interrupt as its cause."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, (KeyboardInterrupt, SystemExit)):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def sticky_device_error(e: BaseException) -> bool:
    """Whether ``e`` is a CUDA error that leaves the process's CUDA context broken (a device-side
    assert, an illegal address): every later trial of this worker would fail the same way."""
    text = str(e)
    return isinstance(e, RuntimeError) and any(marker in text for marker in STICKY_CUDA_ERRORS)


def failure_kind(e: BaseException, shared_device: bool = False) -> str:
    """``plan`` for a failure that is the plan's own (final); else the accident it was.

    ``shared_device``: other workers train on this worker's GPU, so an out-of-memory error may be
    theirs (their nets hold memory too) and is an accident, queued again; alone on it, the plan
    does not fit at this batch size, and retrying cannot help."""
    if interrupted(e):
        return INTERRUPTED
    if isinstance(e, DependencyError):
        return DEPENDENCY
    if isinstance(e, torch.OutOfMemoryError):
        return INFRASTRUCTURE if shared_device else PLAN
    if sticky_device_error(e):
        return DEVICE
    if isinstance(e, OSError) and e.errno != errno.ENOMEM:
        return INFRASTRUCTURE  # I/O, a full disk, a vanished file or mount
    from optuna.artifacts.exceptions import ArtifactNotFound

    if isinstance(e, ArtifactNotFound):
        return INFRASTRUCTURE  # a file the artefact store lost (Optuna's error is no OSError)
    try:
        from sqlalchemy.exc import DBAPIError, OperationalError
    except ImportError:  # pragma: no cover - optuna needs sqlalchemy
        return PLAN
    if isinstance(e, (OperationalError, DBAPIError)):
        return INFRASTRUCTURE  # the database went away or was locked too long
    text = str(e)
    if isinstance(e, (RuntimeError, AssertionError)) and (
        "no CUDA GPUs are available" in text
        or "Torch not compiled with CUDA" in text
        or "CUDA driver" in text
        or "cudaErrorNoDevice" in text
    ):
        return INFRASTRUCTURE
    return PLAN


def _history(t: FrozenTrial) -> list[int]:
    return list(t.system_attrs.get("retry_history", []))


def retries_left(t: FrozenTrial) -> bool:
    """Whether a failed trial may be copied once more (its history holds earlier copies)."""
    return len(_history(t)) < MAX_RETRY


def retry(study: optuna.Study, t: FrozenTrial) -> bool:
    """Queue a copy of the failed trial ``t`` (same plan, same identity); False when its retries
    are used up. The copy carries Optuna's ``failed_trial``/``retry_history`` bookkeeping."""
    if not retries_left(t):
        return False
    system_attrs: dict[str, Any] = {
        **t.system_attrs,
        "failed_trial": t.number,
        "retry_history": [*_history(t), t.number],
    }
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=t.params,
            distributions=t.distributions,
            user_attrs={k: v for k, v in t.user_attrs.items() if k in IDENTITY},
            system_attrs=system_attrs,
        )
    )
    return True


def _retried(trials: list[FrozenTrial]) -> set[int]:
    return {n for t in trials for n in _history(t)}


def requeue_failed(study: optuna.Study) -> int:
    """Queue again every failed trial whose failure was an accident (see the module docstring)
    and that has no copy yet; returns how many. Safe from many processes at once: it runs under
    the storage's lock, and a trial with a copy is never copied again."""
    from .queueing import _queue_lock

    added = 0
    with _queue_lock(study._storage):
        trials = study.get_trials(deepcopy=False)
        done = _retried(trials)
        for t in trials:
            if (
                t.state == TrialState.FAIL
                and t.user_attrs.get("fail_kind") in RETRYABLE
                and t.number not in done
                and retry(study, t)
            ):
                added += 1
    return added


def failed_for_good(t: FrozenTrial, trials: list[FrozenTrial]) -> bool:
    """A failure that will not come back: the plan's own, or an accident out of retries."""
    if t.state != TrialState.FAIL:
        return False
    if t.number in _retried(trials):
        return False  # a copy stands in for it
    return t.user_attrs.get("fail_kind") not in RETRYABLE or not retries_left(t)
