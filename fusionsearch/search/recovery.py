"""Which failed trials come back, and how: a failure is the plan's verdict or the machine's accident.

A trial that diverged (NaN), ran out of memory, or holds a plan that cannot be built failed on its
merits: that is final, and the search learns from it. A trial that was interrupted (Ctrl-C,
SIGTERM), lost its worker (stale heartbeat), hit an I/O error, or could not start
because a trial it needs was itself interrupted, says nothing about its plan. Such a trial is
queued again (``requeue``), as a copy with the same plan, by Optuna's own bookkeeping for retried trials
(``failed_trial`` and ``retry_history`` system attributes, as ``RetryHeartbeatStaleTrialCallback``
writes them), at most ``MAX_RETRY`` times, so a machine that always fails cannot loop for ever.
A warm start whose saved nets are missing or damaged is the same kind of accident: it is trained
again before the trial that needs it goes on (``warmstart.WarmStarts``). A write the disk refused
(full, over a quota or size limit, read-only, failing: ``paths.write_failure``) is one too, and
it stops the worker at once (every later trial would fail alike), so it cannot loop and uses up
none of the trial's retries: the trial completes once there is space, however often it was stopped.

This module only classifies; it imports nothing of the search.
"""

from __future__ import annotations

import errno

import torch

from fusionsearch.errors import DependencyError, DoesNotFitError
from fusionsearch.paths import write_failure

__all__ = [
    "MAX_RETRY",
    "INTERRUPTED",
    "INFRASTRUCTURE",
    "DEPENDENCY",
    "PLAN",
    "DEVICE",
    "DISK",
    "FREE_RETRY",
    "RETRYABLE",
    "sticky_device_error",
    "failure_kind",
    "interrupted",
    "failure_reason",
]

MAX_RETRY = 2  # copies of one failed trial, as the heartbeat's retry callback allows
INTERRUPTED, INFRASTRUCTURE, DEPENDENCY, PLAN = "interrupted", "infrastructure", "dependency", "plan"
DEVICE = "device"  # a sticky CUDA error: the process's CUDA context is broken, not the plan
DISK = "disk"  # a write the disk refused: the worker stops; the same command resumes
RETRYABLE = (INTERRUPTED, INFRASTRUCTURE, DEPENDENCY, DEVICE, DISK)
FREE_RETRY = (DISK,)  # accidents that stop the worker, so they cannot loop: their retries are not counted
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


def failure_reason(e: BaseException) -> str:
    """The one line a failed trial records (``fail_reason``) and its worker logs."""
    if isinstance(e, DoesNotFitError):  # its message says it: "does not fit: needs X GiB, has Y GiB"
        return str(e)
    if isinstance(e, torch.OutOfMemoryError):
        return f"out of memory: {str(e).splitlines()[0] if str(e) else 'allocation failed'}"
    return f"{type(e).__name__}: {e}"


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
    if isinstance(e, DoesNotFitError):  # the free memory of a GPU other workers use is theirs too
        return INFRASTRUCTURE if shared_device and e.by_free_memory else PLAN
    if sticky_device_error(e):
        return DEVICE
    if write_failure(e) is not None:
        return DISK  # before the other OSErrors: torch wraps them in a RuntimeError of its own
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
        "no cuda gpus are available" in text.lower()  # torch: "No CUDA GPUs are available"
        or "Torch not compiled with CUDA" in text
        or "CUDA driver" in text
        or "cudaErrorNoDevice" in text
    ):
        return INFRASTRUCTURE
    return PLAN
