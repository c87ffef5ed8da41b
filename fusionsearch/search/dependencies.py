"""The trials a job needs before it can be measured (``Job.needs``: the warm start, the supernet,
the single-task reference), and what a worker does about them.

A dependency that an accident took away, at any point, comes back one way: it is queued again
and this worker trains it itself if nobody else does (``Dependencies.wait_for``). That covers a
dependency interrupted or failed by an accident, and a warm start whose saved nets are missing,
truncated or damaged (``warmstart``). One that failed for good stops the study with its reason
(``check``; a worker asks ``blocked`` before it takes a trial).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from fusionsearch.errors import DependencyError
from fusionsearch.interrupts import check_interrupt
from fusionsearch.search.context import Need, Reference
from fusionsearch.search.jobs import is_reference
from fusionsearch.search.queueing import find, pop, reap_stale, requeue_failed, single_metrics
from fusionsearch.search.records import TrialRecord
from fusionsearch.search.requeue import failed_for_good

__all__ = ["Dependencies"]


class Dependencies:
    """The trials of ``study`` that jobs depend on, for one worker. ``execute`` runs a trial this
    worker takes while it waits (the worker's ``TrialRunner.run``; None: it is awaited from other
    workers only); ``wait_s``: how long it sleeps between looks."""

    def __init__(
        self,
        study: optuna.Study,
        study_name: str,
        execute: Callable[[optuna.Trial], None] | None = None,
        wait_s: float = 2.0,
    ) -> None:
        self.study, self.study_name, self.execute, self.wait_s = study, study_name, execute, wait_s

    def wait_for(self, match: Callable[[FrozenTrial], bool], what: str, newest: bool = False) -> FrozenTrial:
        """The complete trial ``match`` picks (the last one with ``newest``). Waiting for it, this
        worker runs it itself if it is queued (e.g. retried after its worker died): nobody else may
        be left to. One that an accident failed is queued again first; one that failed for good is
        a DependencyError."""
        while True:
            t, pending = find(self.study, match, newest)
            if t is not None:
                return t
            if not pending:
                if requeue_failed(self.study):
                    continue
                raise DependencyError(self._failed(match, what))
            reap_stale(self.study)
            queued = pop(self.study, match) if self.execute is not None else None
            if queued is not None:
                self.execute(queued)  # type: ignore[misc]  # queued is None when execute is
                continue
            check_interrupt()  # a safe point while it waits
            time.sleep(self.wait_s)

    def reference(self, ref: Reference, wait: bool) -> dict[str, Any] | None:
        """The single-task reference's results (the search's, or the confirmation's for ``ref.seed``)."""
        found, _ = single_metrics(self.study, ref.confirm, ref.seed)
        if found is not None or not wait:
            return found
        self.wait_for(is_reference(ref), "the single-task reference: Delta-m is undefined")
        return single_metrics(self.study, ref.confirm, ref.seed)[0]

    def check(self, needs: list[Need]) -> None:
        """Before a job trains: the trials it will need must be complete, pending, or coming
        back; a sampled plan never trains for nothing after its reference failed for good."""
        for need in needs:
            trials = self.study.get_trials(deepcopy=False)
            mine = [t for t in trials if need.match(t)]
            if mine and all(failed_for_good(t, trials) for t in mine):
                if requeue_failed(self.study):
                    continue
                raise DependencyError(self._failed(need.match, need.what))

    def blocked(self, needs: list[Need]) -> str | None:
        """Why no trial of this study can be measured any more (``needs``, what every sampled plan
        needs, failed for good), or None; a worker checks before it takes a trial."""
        try:
            self.check(needs)
        except DependencyError as e:
            return str(e)
        return None

    def _failed(self, match: Callable[[FrozenTrial], bool], what: str) -> str:
        failed = [t for t in self.study.get_trials(deepcopy=False) if match(t) and t.state == TrialState.FAIL]
        why = f" (trial {failed[-1].number}: {TrialRecord(failed[-1]).fail_reason or 'failed'})" if failed else ""
        return (
            f"{what} failed for good{why}, so the other trials of study {self.study_name!r} cannot be"
            " measured; fix the cause and start a new study (another --study name)"
        )
