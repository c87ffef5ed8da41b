"""What one trial does: find its job (``jobs.Job.of``), check what the job needs first, and run it
with the worker's ``JobContext`` (as Optuna's ``_optimize._run_trial`` runs a study's objective).

The job decides everything else: what it trains and from which start, whether the pruner may stop
it, what it measures and which nets it keeps. The objective only builds, once per worker, what
every job runs with: the context, the trials they depend on (``dependencies``) and the warm
start's nets (``warmstart``).
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from fusionsearch.experiment.recipe import Recipe
from fusionsearch.search.context import JobContext
from fusionsearch.search.dependencies import Dependencies
from fusionsearch.search.jobs import Job, Slot
from fusionsearch.search.settings import StudySettings
from fusionsearch.search.storage import artifact_store
from fusionsearch.search.study import rungs
from fusionsearch.search.warmstart import WarmStarts

__all__ = ["Objective"]


class Objective:
    """Runs the queued trials of one worker: the warm start, a baseline, a sampled plan, a
    confirmation run, the supernet, or a kind an extension registered.

    ``run`` is how a trial a job needs is run when this worker finds it queued (the worker's
    ``TrialRunner.run``; None: it is awaited from other workers only); ``before_trial`` is called
    with each trial once its dependencies are checked.
    """

    def __init__(
        self,
        study: optuna.Study,
        recipe: Recipe,
        settings: StudySettings,
        device: str = "auto",
        progress: bool = False,
        before_trial: Callable[[optuna.Trial], None] | None = None,
        wait_s: float = 2.0,
        run: Callable[[optuna.Trial], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        log = log or (lambda line: None)
        store = artifact_store(settings.storage, settings.artifacts)
        self.deps = Dependencies(study, settings.study, run, wait_s)
        self.warm = WarmStarts(study, settings, store, self.deps, log)
        self.before_trial = before_trial
        self.ctx = JobContext.build(
            study,
            recipe,
            settings,
            device=device,
            progress=progress,
            log=log,
            store=store,
            rungs=rungs(recipe, settings),
            deps=self.deps,
            warm_start=self.warm.get,
        )

    def blocked(self) -> str | None:
        """Why no trial of this study can be measured any more (what every sampled plan needs, the
        warm start or the search's single-task reference, failed for good), or None."""
        return self.deps.blocked(Slot.search_needs(self.ctx))

    def __call__(self, trial: optuna.Trial) -> list[float]:
        job = Job.of(trial)
        self.deps.check(job.needs(self.ctx))
        if self.before_trial is not None:
            self.before_trial(trial)
        return job.run(self.ctx, trial)
