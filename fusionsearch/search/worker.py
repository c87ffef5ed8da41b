"""The worker process: take queued trials one by one until none is left, with heartbeats,
failures recorded with their kind (``recovery``), and Ctrl-C or SIGTERM handled as interruptions,
acted on between trials too (``fusionsearch.interrupts``): the study stops within one trial.
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from fusionsearch.data.partial import check_id_files
from fusionsearch.errors import DependencyError, DeviceError, DiskError
from fusionsearch.interrupts import check_interrupt, interrupt_pending, interrupts_taken
from fusionsearch.paths import write_failure
from fusionsearch.search.credentials import mask
from fusionsearch.search.jobs import Job
from fusionsearch.search.objective import Objective
from fusionsearch.search.optuna_internals import storage_of, trial_id_of
from fusionsearch.search.queueing import Heartbeat, pop, reap_stale, requeue_failed, stale_possible
from fusionsearch.search.records import StudyRecord, TrialRecord
from fusionsearch.search.recovery import DEVICE, DISK, INTERRUPTED, PLAN, failure_kind, failure_reason, interrupted
from fusionsearch.search.requeue import retry
from fusionsearch.search.storage import DEFAULT_STORAGE, queue_lock
from fusionsearch.search.study import load_study
from fusionsearch.train.devices import use_device

__all__ = [
    "run_worker",
    "TrialRunner",
    "run_workers",
    "worker_command",
    "trial_label",
]


def run_worker(
    study_name: str,
    storage: str = DEFAULT_STORAGE,
    *,
    device: str = "auto",
    timeout: float | None = None,
    max_trials: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    before_trial: Callable[[optuna.Trial], None] | None = None,
    artifacts: str | None = None,
    worker: int = 0,
    shares_device: bool = False,
) -> int:
    """Run a study's queued trials in this process until none are left; return how many it ran.

    A failure (out of memory, a NaN loss, a bad plan) fails its trial with the reason and the worker
    goes on; a sticky CUDA error queues its trial again and stops the worker with a ``DeviceError``
    (its CUDA context is broken), a write the disk refused with a ``DiskError``.

    Args:
        device: ``auto`` picks GPU ``worker % count`` (the plans drawn do not depend on it).
        timeout: stop starting trials after this many seconds (default: the study's).
        worker: this worker's number in the study.
        shares_device: other workers train on the same GPU: running out of memory queues the
            trial again instead of failing it.
    """
    study, recipe, settings = load_study(study_name, storage)
    check_id_files(StudyRecord(study).id_files, recipe.data.get("labelled"), study_name)  # as the study began
    device = use_device(device, worker)
    timeout = settings.timeout if timeout is None else timeout
    if artifacts is not None:
        settings.artifacts = artifacts
    runner = TrialRunner(study, recipe, settings, device, log, shares_device, progress, before_trial)
    objective, execute, log = runner.objective, runner.run, runner.log
    requeue_failed(study)  # what an accident failed last time comes back before anything else runs
    start, ran = time.monotonic(), 0
    # SIGTERM (``kill``, a scheduler's stop, ``run`` stopping its workers) is handled as Ctrl-C: the
    # running trial is failed as interrupted and queued again instead of left RUNNING
    with interrupts_taken():
        while max_trials is None or ran < max_trials:
            check_interrupt()  # between trials: a Ctrl-C that a finaliser swallowed stops here
            if timeout is not None and time.monotonic() - start > timeout:
                log("timeout reached")
                break
            reap_stale(study)
            why = objective.blocked()
            if why is not None:
                raise DependencyError(why)
            trial = pop(study)
            if trial is None:
                if any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)) and stale_possible(
                    study
                ):
                    time.sleep(1.0)  # a dead worker's trial may come back to the queue
                    continue
                break
            ran += 1
            execute(trial)
    return ran


class TrialRunner:
    """Runs one trial and records its end: pruned, complete, failed with its kind, or queued again.
    It builds the trial's ``Objective`` and hands it ``run``, so that a trial that needs another
    one queued (a warm start) runs it here, the same way (heartbeat, failure kinds, memory freed)."""

    def __init__(
        self,
        study: optuna.Study,
        recipe: Any,
        settings: Any,
        device: str,
        log: Callable[[str], None] | None = None,
        shares_device: bool = False,
        progress: bool = False,
        before_trial: Callable[[optuna.Trial], None] | None = None,
    ) -> None:
        self.study, self.settings, self.device, self.shares_device = study, settings, device, shares_device
        self.log: Callable[[str], None] = log or (lambda s: None)
        self.objective = Objective(study, recipe, settings, device, progress, before_trial, run=self.run, log=self.log)

    def run(self, trial: optuna.Trial) -> None:
        label = trial_label(trial)
        try:
            check_interrupt()  # one taken while ``pop`` claimed the trial
            self.log(f"{label}: started on {self.device}")
            with Heartbeat(storage_of(self.study), trial_id_of(trial)):
                failed = self._run_trial(trial, label)
        except KeyboardInterrupt:  # stopped before ``_run_trial`` held it: queued again all the same
            if storage_of(self.study).get_trial(trial_id_of(trial)).state == TrialState.RUNNING:
                _fail(self.study, trial, "interrupted (queued again)", INTERRUPTED, requeue=True)
            raise
        # outside the except blocks: there the traceback still held the trial's frames, and with
        # them its net, so collecting freed nothing of what ran out of memory
        _free_memory()
        if failed is not None:
            raise failed

    def _run_trial(self, trial: optuna.Trial, label: str) -> BaseException | None:
        """Run one trial and record its end; returns what must stop this worker, if anything."""
        study, log = self.study, self.log
        try:
            values = self.objective(trial)
        except optuna.TrialPruned as e:
            study.tell(trial, state=TrialState.PRUNED)
            log(f"{label}: {e}")
            return None
        except (KeyboardInterrupt, SystemExit, DependencyError) as e:
            # no verdict on the plan: queue it again now, then stop this worker
            kind = failure_kind(e)
            reason = "interrupted (queued again)" if kind == INTERRUPTED else f"{e} (queued again)"
            _fail(study, trial, reason, kind, requeue=True)
            raise
        except Exception as e:
            return self._failed(trial, label, e)
        study.tell(trial, values if len(values) > 1 else values[0])
        log(f"{label}: done, " + ", ".join(f"{o}={v:.4g}" for o, v in zip(self.settings.objectives, values)))
        return None

    def _failed(self, trial: optuna.Trial, label: str, e: Exception) -> BaseException | None:
        if interrupted(e) or interrupt_pending():  # Ctrl-C inside a database commit, or while it failed
            _fail(self.study, trial, "interrupted (queued again)", INTERRUPTED, requeue=True)
            raise KeyboardInterrupt from e
        reason, kind = failure_reason(e), failure_kind(e, self.shares_device)
        if kind == DEVICE:  # every later trial of this process would fail the same way
            _fail(self.study, trial, f"{reason} (queued again)", kind, requeue=True)
            return DeviceError(
                f"{label}: the CUDA context of {self.device} is broken ({reason}): this worker stops and the trial"
                " is queued again; run the same command to resume in a fresh process"
            )
        if kind == DISK:  # so would every later trial: stop rather than fail them all
            return self._disk_full(trial, label, e)
        _fail(self.study, trial, reason, kind)
        again = "" if kind == PLAN else " (an accident, not the plan's: the next run queues it again)"
        self.log(f"{label}: failed: {reason}{again}")
        return None

    def _disk_full(self, trial: optuna.Trial, label: str, e: Exception) -> DiskError:
        """Queue the trial again and say, in one line, what the disk refused; the database may be
        on that disk, so if recording the failure fails too, the trial stays RUNNING and comes
        back through its stale heartbeat."""
        refused = write_failure(e) or e
        what = str(refused)
        if isinstance(refused, OSError) and refused.strerror:  # "No space left on device: 'x/trial-3.pt'"
            what = refused.strerror + (f": {refused.filename!r}" if refused.filename else "")
        with contextlib.suppress(Exception):
            _fail(self.study, trial, f"disk: {what} (queued again)", DISK, requeue=True)
        return DiskError(
            f"{label}: a file cannot be written ({what}): the disk is full or not writable. The trial is queued"
            " again; free space (or fix the disk) and run the same command to resume"
        )


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str, kind: str, requeue: bool = False) -> None:
    """Fail ``trial`` with its reason and kind (``recovery``); with ``requeue``, queue its copy now."""
    record = TrialRecord(trial)
    record.fail_reason = mask(reason)  # a driver's error may quote a password
    record.fail_kind = kind
    frozen = study.tell(trial, state=TrialState.FAIL)
    if requeue:
        with queue_lock(storage_of(study)):
            retry(study, frozen)


def trial_label(t: optuna.Trial | optuna.trial.FrozenTrial) -> str:
    """``warmstart``, ``single``, ``trial 7`` or ``confirm trial 7 (seed 1002)`` for log lines."""
    return Job.of(t).log_label(t.number)


def worker_command(
    study: str, device: str, threads: int, artifacts: str | None = None, index: int = 0, shared: bool = False
) -> list[str]:
    """The command line of one worker process. The storage URL is not on it: it may hold a
    password, and ``ps`` shows every process's arguments to every user; workers read it from
    ``FUSIONSEARCH_STORAGE`` in their environment."""
    cmd = [sys.executable, "-m", "fusionsearch.cli", "worker", "--study", study, "--device", device]
    cmd += ["--threads", str(threads), "--worker-index", str(index), "--quiet"]
    cmd += ["--shares-device"] if shared else []
    return cmd + (["--artifacts", artifacts] if artifacts else [])


def run_workers(
    study: optuna.Study,
    settings: Any,
    devices: list[str],
    *,
    quiet: bool = False,
    artifacts: str | None = None,
    steps_total: int = 0,
    console: Any = None,
) -> tuple[list[int], Path | None]:
    """Run the queued trials: here for one device, else one worker process per device (as
    ``fusionsearch worker``; CPU threads split between them) while this process shows the live
    view. Returns the workers that exited with an error and the folder of their logs."""
    from rich.console import Console

    from fusionsearch.report.leaderboard import live_view
    from fusionsearch.search.storage import artifact_dir

    console = console or Console()
    say = lambda m: console.print(m, highlight=False)
    if len(devices) <= 1:
        run_worker(settings.study, settings.storage, device=devices[0], progress=not quiet, log=say)
        return [], None
    logs = artifact_dir(settings.storage, artifacts) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    env = {**os.environ, "FUSIONSEARCH_STORAGE": settings.storage}
    procs = []
    for i, dev in enumerate(devices):
        log = open(logs / f"{settings.study}-worker{i}.log", "a")  # noqa: SIM115 - closed below
        shared = dev.startswith("cuda") and devices.count(dev) > 1
        cmd = worker_command(settings.study, dev, threads, artifacts, i, shared)
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    say(f"{len(devices)} workers on {', '.join(devices)}; logs in {logs}")
    try:
        if quiet:
            while any(p.poll() is None for p, _ in procs):
                time.sleep(2)
                check_interrupt()
        else:
            from rich.live import Live

            with Live(live_view(study, steps_total), console=console, refresh_per_second=1) as live:
                while any(p.poll() is None for p, _ in procs):
                    time.sleep(1)
                    check_interrupt()
                    live.update(live_view(study, steps_total))
    except KeyboardInterrupt:
        for p, _ in procs:
            p.terminate()  # SIGTERM: each worker fails its trial as interrupted and queues it again
        raise
    finally:
        for _, log in procs:
            log.close()
    return [i for i, (p, _) in enumerate(procs) if p.returncode not in (0, None)], logs
