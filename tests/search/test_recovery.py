"""Which failures are the plan's verdict and which the machine's accident (``search.recovery``), and
which failed trials are therefore failed for good (``search.requeue.failed_for_good``).

Errors are built as the libraries raise them (torch, Optuna, SQLAlchemy, the OS); nothing trains."""

from __future__ import annotations

import errno
import sqlite3

import optuna
import pytest
import torch
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.exceptions import StorageInternalError
from optuna.trial import TrialState
from sqlalchemy.exc import DBAPIError, OperationalError

from fusionsearch.errors import DataError, DependencyError, DoesNotFitError, LostDependencyError, PlanError
from fusionsearch.search.recovery import (
    DEPENDENCY,
    DEVICE,
    DISK,
    INFRASTRUCTURE,
    INTERRUPTED,
    MAX_RETRY,
    PLAN,
    RETRYABLE,
    failure_kind,
    failure_reason,
    interrupted,
    sticky_device_error,
)
from fusionsearch.search.requeue import failed_for_good, retried, retries_left, retry

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _raised_during(outer: type[BaseException], inner: BaseException, cause: bool) -> BaseException:
    """``outer`` raised while handling ``inner``: ``raise ... from inner`` (cause) or implicitly (context)."""
    try:
        try:
            raise inner
        except BaseException as e:
            if cause:
                raise outer("commit failed") from e
            raise outer("commit failed")  # noqa: B904 - the implicit context is what is tested
    except outer as e:
        return e
    raise AssertionError("unreachable")


# ---- interrupted ---------------------------------------------------------------------------------


@pytest.mark.parametrize("e", [KeyboardInterrupt(), KeyboardInterrupt("signal 15"), SystemExit(1)])
def test_ctrl_c_sigterm_and_exit_are_interruptions(e):
    assert interrupted(e)
    assert failure_kind(e) == INTERRUPTED


@pytest.mark.parametrize("cause", [True, False], ids=["cause", "context"])
def test_an_interrupt_inside_a_database_commit_is_still_an_interruption(cause):
    e = _raised_during(StorageInternalError, KeyboardInterrupt(), cause)
    assert interrupted(e)
    assert failure_kind(e) == INTERRUPTED  # not the INFRASTRUCTURE a storage error would be


def test_an_error_caused_by_another_error_is_no_interruption_and_a_cycle_ends():
    assert not interrupted(_raised_during(StorageInternalError, ValueError("x"), cause=True))
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a  # a cycle of causes must not loop for ever
    assert not interrupted(a)


# ---- CUDA errors that break the process ----------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: device-side assert triggered",
        "CUDA error: an illegal memory access was encountered",
        "CUDA error: an illegal instruction was encountered",
        "CUDA error: misaligned address",
        "CUDA error: unspecified launch failure",
        "CUDA error: uncorrectable ECC error encountered",
        "CUDA kernel errors: cudaErrorIllegalAddress",
        "CUDA kernel errors: cudaErrorLaunchFailure",
        "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, k)`",
    ],
)
def test_a_sticky_cuda_error_is_the_devices_not_the_plans(message):
    e = RuntimeError(message)
    assert sticky_device_error(e)
    assert failure_kind(e) == DEVICE
    assert failure_kind(e, shared_device=True) == DEVICE


@pytest.mark.parametrize(
    "e",
    [
        RuntimeError("CUDA error: invalid argument"),  # a bad call: the plan's
        RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 16x2)"),
        ValueError("CUDA error: an illegal memory access was encountered"),  # only CUDA's RuntimeError
    ],
)
def test_other_errors_are_not_sticky(e):
    assert not sticky_device_error(e)
    assert failure_kind(e) == PLAN


# ---- out of memory -------------------------------------------------------------------------------


def test_out_of_memory_is_the_plans_alone_on_a_device_and_an_accident_on_a_shared_one():
    e = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    assert failure_kind(e) == PLAN  # it does not fit at this batch size: retrying cannot help
    assert failure_kind(e, shared_device=True) == INFRASTRUCTURE  # the other workers' nets hold memory too


@pytest.mark.parametrize("e", [MemoryError(), OSError(errno.ENOMEM, "Cannot allocate memory")])
def test_host_memory_exhausted_is_the_plans(e):
    assert failure_kind(e) == PLAN
    assert failure_kind(e, shared_device=True) == PLAN  # only the GPU's memory is shared


# ---- the machine's accidents ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "e",
    [
        OSError(errno.ESTALE, "Stale file handle"),  # a network mount gone away
        FileNotFoundError(errno.ENOENT, "No such file or directory", "/mnt/study/trial-3.pt"),
        PermissionError(errno.EACCES, "Permission denied"),
        ArtifactNotFound("the artefact store lost trial-3.pt"),  # Optuna's error is no OSError
        OperationalError("INSERT INTO trials ...", {}, sqlite3.OperationalError("database is locked")),
        DBAPIError("SELECT 1", {}, Exception("server closed the connection unexpectedly")),
        RuntimeError("CUDA driver initialization failed, you might not have a CUDA gpu."),
        RuntimeError("CUDA error: no CUDA-capable device is detected (cudaErrorNoDevice)"),
        AssertionError("Torch not compiled with CUDA enabled"),  # torch.cuda's own wording and type
    ],
    ids=lambda e: type(e).__name__,
)
def test_io_storage_artefact_and_missing_device_errors_are_accidents(e):
    assert failure_kind(e) == INFRASTRUCTURE
    assert failure_kind(e) in RETRYABLE


def _torch_save_error(path: str, limit: int) -> tuple[str, str]:
    """What torch.save raises when the disk refuses the write, to a path and to a file object:
    a RuntimeError of its own (run in a child with a file-size limit, as a full disk would)."""
    import subprocess
    import sys

    script = (
        "import resource, sys, torch\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "x = {'w': torch.zeros(100_000)}\n"
        "for target in (sys.argv[1], open(sys.argv[1] + '.f', 'wb')):\n"
        "    try:\n        torch.save(x, target)\n"
        "    except Exception as e:\n        print(type(e).__name__, '|', e.__context__ is not None, '|', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stderr
    return lines[0], lines[1]


@pytest.mark.parametrize(
    "e",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        OSError(errno.EFBIG, "File too large"),  # over a size limit (RLIMIT_FSIZE)
        OSError(errno.EROFS, "Read-only file system"),
        OSError(errno.EIO, "Input/output error"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),  # torch.save's words
        RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
        OperationalError("INSERT INTO trials ...", {}, sqlite3.OperationalError("database or disk is full")),
    ],
    ids=lambda e: " ".join(str(e).split()[:3]),
)
def test_a_write_the_disk_refused_is_an_accident_that_costs_no_retry(e):
    assert failure_kind(e) == DISK and DISK in RETRYABLE
    study = optuna.create_study()
    chain = [_fail(study, DISK, slot=0)]
    for _ in range(MAX_RETRY + 3):  # stopped by a full disk again and again: it always comes back
        assert retries_left(chain[-1]) and retry(study, chain[-1])
        trial = study.ask()
        trial.set_user_attr("fail_kind", DISK)
        chain.append(study.tell(trial, state=TrialState.FAIL))
    assert not failed_for_good(chain[-1], study.get_trials())
    for _ in range(MAX_RETRY + 1):  # an I/O accident then fails it: that one has MAX_RETRY copies, no more
        assert retry(study, chain[-1])
        trial = study.ask()
        trial.set_user_attr("fail_kind", INFRASTRUCTURE)
        chain.append(study.tell(trial, state=TrialState.FAIL))
    assert not retries_left(chain[-1]) and failed_for_good(chain[-1], study.get_trials())


def test_torchs_own_wording_of_a_full_disk_is_an_accident(tmp_path):
    """torch.save under a file-size limit (a full disk): "unexpected pos ..." was filed as the plan's failure."""
    to_path, to_file = _torch_save_error(str(tmp_path / "x.pt"), 100_000)
    for line in (to_path, to_file):
        kind, _, text = line.split(" | ")
        assert kind == "RuntimeError"
        assert failure_kind(RuntimeError(text)) == DISK, line


def test_torchs_no_gpus_message_is_an_accident():
    # torch's own words (capital N): a machine without its GPU is retried elsewhere, not the plan's verdict
    assert failure_kind(RuntimeError("No CUDA GPUs are available")) == INFRASTRUCTURE
    assert failure_kind(RuntimeError("no CUDA GPUs are available")) == INFRASTRUCTURE


@pytest.mark.parametrize("e", [DependencyError("the warm start failed"), LostDependencyError("nets unreadable")])
def test_a_missing_dependency_is_no_verdict_on_the_plan(e):
    assert failure_kind(e) == DEPENDENCY
    assert failure_kind(e) in RETRYABLE


# ---- the plan's own failures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "e",
    [
        FloatingPointError("loss is nan at step 3"),
        ValueError("loss is nan"),
        PlanError("fusion needs at least 2 tasks"),
        DataError("damaged: its SHA-256 differs"),
        KeyError("layer9"),
        RuntimeError("Given groups=1, weight of size [8, 16, 1, 1], expected input[4, 32, 8, 8]"),
        AssertionError("shapes differ"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_everything_else_is_the_plans_and_final(e):
    assert failure_kind(e) == PLAN
    assert failure_kind(e, shared_device=True) == PLAN
    assert PLAN not in RETRYABLE


def test_the_kinds_that_come_back():
    assert set(RETRYABLE) == {INTERRUPTED, INFRASTRUCTURE, DEPENDENCY, DEVICE, DISK}
    assert len({INTERRUPTED, INFRASTRUCTURE, DEPENDENCY, PLAN, DEVICE, DISK}) == 6


# ---- failed for good -----------------------------------------------------------------------------


def _fail(study: optuna.Study, kind: str, **attrs) -> optuna.trial.FrozenTrial:
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, user_attrs={**attrs, "fail_kind": kind}))
    return study.get_trials()[-1]


@pytest.mark.parametrize("kind", [INTERRUPTED, INFRASTRUCTURE, DEPENDENCY, DEVICE])
def test_an_accident_is_failed_for_good_only_once_its_retries_are_used_up(kind):
    study = optuna.create_study()
    first = _fail(study, kind, slot=0)
    assert not failed_for_good(first, study.get_trials())  # it will come back
    chain = [first]
    for _ in range(MAX_RETRY):
        assert retries_left(chain[-1]) and retry(study, chain[-1])
        assert failed_for_good(chain[-1], study.get_trials()) is False  # its copy stands in for it
        copy = study.get_trials()[-1]
        assert copy.state == TrialState.WAITING and copy.user_attrs == {"slot": 0}
        trial = study.ask()  # takes the queued copy, which fails the same way
        assert trial.number == copy.number
        trial.set_user_attr("fail_kind", kind)
        chain.append(study.tell(trial, state=TrialState.FAIL))
    last = chain[-1]
    assert not retries_left(last) and not retry(study, last)  # no third copy
    trials = study.get_trials()
    assert failed_for_good(last, trials)
    assert retried(trials) == {t.number for t in chain[:-1]}
    assert [failed_for_good(t, trials) for t in chain] == [False] * MAX_RETRY + [True]


def test_a_plan_failure_is_failed_for_good_at_once_and_other_states_never_are():
    study = optuna.create_study()
    plan = _fail(study, PLAN, slot=0)
    assert failed_for_good(plan, study.get_trials())
    unknown = _fail(study, "unknown", slot=1)  # a kind this version does not know is not retried
    assert failed_for_good(unknown, study.get_trials())
    study.add_trial(optuna.create_trial(value=1.0, user_attrs={"slot": 2}))
    study.add_trial(optuna.create_trial(state=TrialState.PRUNED, user_attrs={"slot": 3}))
    study.enqueue_trial({}, user_attrs={"slot": 4})
    trials = study.get_trials()
    assert [failed_for_good(t, trials) for t in trials] == [True, True, False, False, False]


def test_does_not_fit_is_the_plans_unless_a_shared_gpus_free_memory_said_so():
    by_cap = DoesNotFitError("does not fit: needs 2.00 GiB, has 1.00 GiB (train.max_memory; batch 8)")
    by_free = DoesNotFitError("does not fit: needs 2.00 GiB, has 1.00 GiB (free on cuda:0)", by_free_memory=True)
    assert failure_reason(by_cap).startswith("does not fit: needs 2.00 GiB, has 1.00 GiB")
    assert failure_kind(by_cap) == failure_kind(by_cap, shared_device=True) == failure_kind(by_free) == PLAN
    assert failure_kind(by_free, shared_device=True) == INFRASTRUCTURE  # another worker's net held it
