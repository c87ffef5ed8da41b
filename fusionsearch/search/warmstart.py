"""The warm start's nets, which every warm-started trial begins from: read once per worker from the
artefact store (so workers on other machines get them too), and trained again when they cannot be
read back whole.

A file that is missing, truncated or damaged is an accident, not the waiting plan's fault, and no
trial trains on it: the warm start is queued again (``WarmStartJob(replaces=N)``) and trained
first, with the study seed, so it is the same nets again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from fusionsearch.errors import LostDependencyError
from fusionsearch.experiment.experiment import WarmStart
from fusionsearch.search.artifacts import read_net
from fusionsearch.search.dependencies import Dependencies
from fusionsearch.search.jobs import WARM_START_NEED, Job, WarmStartJob
from fusionsearch.search.optuna_internals import storage_of
from fusionsearch.search.recovery import MAX_RETRY, failure_reason, interrupted
from fusionsearch.search.requeue import failed_for_good
from fusionsearch.search.settings import StudySettings
from fusionsearch.search.storage import artifact_dir, queue_lock

__all__ = ["WarmStarts"]


class WarmStarts:
    """One worker's warm start: ``get`` returns its nets, read (and checked) once."""

    def __init__(
        self,
        study: optuna.Study,
        settings: StudySettings,
        store: Any,
        deps: Dependencies,
        log: Callable[[str], None],
    ) -> None:
        self.study, self.settings, self.store, self.deps, self.log = study, settings, store, deps, log
        self._warm: WarmStart | None = None
        self._retrained = 0  # warm starts this worker queued again because their nets were unreadable

    def get(self) -> WarmStart:
        """The nets of the newest complete warm start whose file reads back whole (see the module
        docstring); one that does not is trained again first (``_replace``)."""
        lost: dict[int, str] = {}  # warm-start trial -> why its nets cannot be read
        while self._warm is None:
            match = lambda t: WARM_START_NEED.match(t) and t.number not in lost
            done = self.deps.wait_for(match, WARM_START_NEED.what, newest=True)
            try:
                self._warm = WarmStart.of(read_net(self.store, done))
            except Exception as e:  # any way the file fails to come back whole: retrained, a bounded number of times
                if interrupted(e):
                    raise
                lost[done.number] = failure_reason(e)
                self._replace(done, lost)
        return self._warm

    def _replace(self, done: FrozenTrial, lost: Mapping[int, str]) -> None:
        """Queue the warm start again after ``done``'s nets could not be read, unless another warm
        start is complete and untried, queued, running, or coming back from an accident (another
        worker got here first). A store that loses what it was just given (a full or vanished
        disk) would retrain for ever: after ``MAX_RETRY`` retrains this worker stops with one line,
        and the waiting trial is queued again (``run_worker``), so nothing is lost."""
        where = artifact_dir(self.settings.storage, self.settings.artifacts)
        with queue_lock(storage_of(self.study)):
            trials = self.study.get_trials(deepcopy=False)
            warm = [t for t in trials if isinstance(Job.of(t), WarmStartJob)]
            if not all(t.number in lost or failed_for_good(t, trials) for t in warm):
                return
            if self._retrained >= MAX_RETRY:
                raise LostDependencyError(
                    f"the warm start's nets cannot be read from the artefact folder {where} (trial {done.number}:"
                    f" {lost[done.number]}), also after training it again {self._retrained} times: check that"
                    " folder (free space, the mount, --artifacts), then run the same command again; the waiting"
                    " trial is queued again"
                )
            WarmStartJob(replaces=done.number).enqueue(self.study, skip_if_exists=False)
            self._retrained += 1
        why = lost[done.number]
        self.log(f"warmstart (trial {done.number}) cannot be read from {where} ({why}): training it again")
