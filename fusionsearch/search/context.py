"""What a job runs with: its study, recipe and settings, the experiment and search space built once
from the recipe, the device, where its nets go, and the two services every job may call on (the
trials it depends on, ``Waiter``, and the warm start's nets).

``JobContext`` is built once per worker (``objective.Objective``) and handed to each job's
``run`` (``jobs.Job``); the supernet's training and a slot's draw read it too, instead of calling
back into an objective. ``Need`` and ``Reference`` are how a job says what it needs first and
what its Delta-m is measured against; ``dependencies.Dependencies`` answers them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial

from fusionsearch.experiment.experiment import Experiment, WarmStart
from fusionsearch.experiment.recipe import Recipe
from fusionsearch.experiment.space import SearchSpace
from fusionsearch.search.settings import StudySettings

__all__ = ["Need", "Reference", "Waiter", "JobContext"]


@dataclass(frozen=True)
class Need:
    """A trial a job needs complete before it can be measured: ``match`` picks it among the study's
    trials, ``what`` names it in the error when it failed for good."""

    match: Callable[[FrozenTrial], bool]
    what: str


@dataclass(frozen=True)
class Reference:
    """The single-task run a job's Delta-m is measured against: the search's (``confirm`` False)
    or the confirmation's with ``seed``; ``own``: the job is that run itself (``single``)."""

    confirm: bool = False
    seed: int | None = None
    own: bool = False


class Waiter(Protocol):
    """The trials a job depends on (``dependencies.Dependencies``)."""

    def wait_for(self, match: Callable[[FrozenTrial], bool], what: str, newest: bool = False) -> FrozenTrial:
        """The complete trial ``match`` picks, run here if it is queued, waited for if it runs elsewhere."""
        ...

    def reference(self, ref: Reference, wait: bool) -> dict[str, Any] | None:
        """``ref``'s metrics and evaluations (``{"metrics", "evals"}``); None if not complete and not ``wait``."""
        ...


@dataclass
class JobContext:
    """Everything a job's ``run`` reads besides its trial (see the module docstring)."""

    study: optuna.Study
    recipe: Recipe
    settings: StudySettings
    exp: Experiment
    space: SearchSpace
    device: str
    progress: bool
    log: Callable[[str], None]
    store: Any  # the study's Optuna artefact store (``storage.artifact_store``)
    rungs: list[int] | None  # where searched trials evaluate (``study.rungs``)
    deps: Waiter
    warm_start: Callable[[], WarmStart]  # the warm start's nets (``warmstart.WarmStarts.get``)

    @classmethod
    def build(
        cls,
        study: optuna.Study,
        recipe: Recipe,
        settings: StudySettings,
        *,
        device: str,
        progress: bool,
        log: Callable[[str], None],
        store: Any,
        rungs: list[int] | None,
        deps: Waiter,
        warm_start: Callable[[], WarmStart],
    ) -> JobContext:
        """The context of ``study``, whose experiment and search space are built here, once."""
        exp, space = Experiment(recipe, settings.seed), recipe.space
        return cls(study, recipe, settings, exp, space, device, progress, log, store, rungs, deps, warm_start)
