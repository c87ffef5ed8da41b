"""A study's settings: how it runs (trials, sampler, pruner, objectives, seeds, confirmation),
stored with it so that workers on other machines agree, and the rules a study's recipe must meet
before one exists (``trials: grid`` counts the grid's points).

Its own module so that what a job reads of its study (``context.JobContext.settings``) sits
below the jobs that the study queues.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusionsearch.errors import FusionSearchError
from fusionsearch.experiment.experiment import BASELINES, Experiment
from fusionsearch.experiment.recipe import Recipe
from fusionsearch.experiment.sections import MAX_SEED
from fusionsearch.search.storage import DEFAULT_STORAGE

__all__ = [
    "StudySettings",
    "labelled_suffix",
    "OBJECTIVES",
    "METRIC_NAMES",
    "PRUNERS",
    "KEEP_NETS",
    "MAX_TRIALS",
]

# objective name -> maximise?
OBJECTIVES = {"delta_m": True, "params": False, "latency": False}


METRIC_NAMES = {"delta_m": "Delta-m (%)", "params": "parameters", "latency": "latency (ms)"}


PRUNERS = ("successive_halving", "hyperband", "median", "none")


KEEP_NETS = ("confirmed", "all")
MAX_TRIALS = 100_000  # queued slots: each is a row in the storage before anything runs


@dataclass
class StudySettings:
    """How the study runs; stored with the study so that workers on other machines agree.

    ``StudySettings.from_recipe`` fills what is not given from the recipe's ``study`` and
    ``confirm`` sections, as ``fusionsearch run`` does.

    Attributes:
        study: the study's name (a second run with the same name resumes it).
        storage: the Optuna storage URL (``sqlite:///FILE``, ``postgresql://...``, ``journal:FILE``).
        trials: sampled trials after the baselines.
        timeout: stop starting trials after this many seconds.
        sampler: ``tpe``, ``nsga2``, ``random`` or ``grid``.
        pruner: ``successive_halving``, ``hyperband``, ``median`` or ``none``.
        objectives: ``["delta_m"]``, or with ``params`` or ``latency`` for a Pareto front.
        baselines: the baselines trained before the search (``single`` is Delta-m's reference).
        artifacts: the artefact folder (default: beside the SQLite file).
        seed: the study seed.
        confirm_top: searched plans confirmed over seeds after the search.
        confirm_seeds: fresh seeds of the confirmation (0: no confirmation).
        confirm_per: confirm the top plans for each value of this search parameter.
        keep_nets: trained nets kept as artefacts: ``confirmed`` (baselines and confirmed plans) or ``all``.
    """

    study: str = "fusionsearch"
    storage: str = DEFAULT_STORAGE
    trials: int = 8
    timeout: float | None = None
    sampler: str = "tpe"
    pruner: str = "hyperband"
    objectives: list[str] = field(default_factory=lambda: ["delta_m"])
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    artifacts: str | None = None
    seed: int = 0
    confirm_top: int = 2  # searched plans confirmed over seeds after the search
    confirm_seeds: int = 3  # fresh seeds of the confirmation (0: no confirmation)
    confirm_per: str | None = None  # confirm the top plans for each value of this search parameter
    keep_nets: str = "confirmed"  # trained nets kept: baselines and confirmed plans, or "all"

    def __post_init__(self) -> None:
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad:
            raise FusionSearchError(f"unknown objective(s) {bad}; choose from {', '.join(OBJECTIVES)}")
        if "delta_m" in self.objectives and "single" not in self.baselines:
            raise FusionSearchError("the delta_m objective needs the 'single' baseline")
        if self.sampler not in ("tpe", "nsga2", "random", "grid"):
            raise FusionSearchError(f"unknown sampler {self.sampler!r}: tpe, nsga2, random or grid")
        if self.pruner not in PRUNERS:
            raise FusionSearchError(f"unknown pruner {self.pruner!r}: {', '.join(PRUNERS)}")
        if not self.objectives or len(set(self.objectives)) < len(self.objectives):
            raise FusionSearchError(f"objectives must name each objective once, got {self.objectives}")
        if not 0 <= self.trials <= MAX_TRIALS:
            raise FusionSearchError(f"trials must be in 0..{MAX_TRIALS:,}, got {self.trials}")
        if not 0 <= self.seed <= MAX_SEED:  # the confirmation's seeds are seed x 1000 + i, below 2^32
            raise FusionSearchError(f"the study seed must be in 0..{MAX_SEED:,}, got {self.seed}")
        if self.timeout is not None and not 0 <= self.timeout < float("inf"):
            raise FusionSearchError(f"timeout must be a number of seconds >= 0, got {self.timeout}")
        if self.confirm_top < 0 or self.confirm_seeds < 0:
            raise FusionSearchError("confirm top and seeds must be >= 0")
        if self.keep_nets not in KEEP_NETS:
            raise FusionSearchError(f"unknown keep_nets {self.keep_nets!r}: {', '.join(KEEP_NETS)}")

    @classmethod
    def from_recipe(
        cls,
        recipe: Recipe,
        *,
        study: str | None = None,
        storage: str | None = None,
        trials: int | None = None,
        timeout: float | None = None,
        sampler: str | None = None,
        pruner: str | None = None,
        objectives: Sequence[str] | None = None,
        artifacts: str | None = None,
        seed: int | None = None,
        confirm_top: int | None = None,
        confirm_seeds: int | None = None,
        confirm_per: str | None = None,
        keep_nets: str = "confirmed",
        labelled: Mapping[str, float | str] | None = None,
        experiment: Experiment | None = None,
    ) -> StudySettings:
        """The settings of a fusion study of ``recipe``: each override that is None takes the
        recipe's ``study`` and ``confirm`` sections, then the defaults. The rules that ``run``
        and a Python caller share live here: the recipe must have two tasks to fuse, labelled
        by its data set (``Experiment.check_fusion_tasks``); ``trials: grid`` counts the grid; several
        objectives switch TPE to NSGA-II unless ``sampler`` asks for TPE itself; the default
        study name is the recipe, backbone and tasks, plus ``labelled``, the labelling given on
        top of the recipe's (another labelling is another study: ``labelled_suffix``).
        ``experiment``: the recipe's, where the caller has one (its data and traced backbone)."""
        exp = experiment or Experiment(recipe)
        exp.check_fusion_tasks()
        st, conf = recipe.defaults, recipe.confirmation
        goals = list(objectives) if objectives else list(st.objectives)
        chosen = sampler or st.sampler
        mode = "-supernet" if recipe.space.mode == "supernet" else ""  # another search, another study
        if len(goals) > 1 and chosen == "tpe" and sampler is None:
            chosen = "nsga2"  # TPE's multi-objective mode is no default: NSGA-II keeps a Pareto front
        return cls(
            study=study or f"{recipe.name}-{recipe.backbone}-{'-'.join(recipe.tasks)}{labelled_suffix(labelled)}{mode}",
            storage=DEFAULT_STORAGE if storage is None else storage,
            trials=trials if trials is not None else _recipe_trials(exp, st.trials),
            timeout=timeout if timeout is not None else st.timeout,
            sampler=chosen,
            pruner=pruner or st.pruner,
            objectives=goals,
            artifacts=artifacts,
            seed=seed if seed is not None else int(st.seed),
            confirm_top=confirm_top if confirm_top is not None else conf.top,
            confirm_seeds=confirm_seeds if confirm_seeds is not None else conf.seeds,
            confirm_per=confirm_per or conf.per,
            keep_nets=keep_nets,
        )

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def directions(self) -> list[str]:
        """Optuna's direction of each objective: ``maximize`` Delta-m, ``minimize`` params and latency."""
        return ["maximize" if OBJECTIVES[o] else "minimize" for o in self.objectives]


def labelled_suffix(labelled: Mapping[str, float | str] | None) -> str:
    """The default study name's tail for a labelling given on top of the recipe's (``seg=0.1``
    or ``seg=ids.txt``): another labelling is another study, not a resumption of this one."""
    parts = [f"{t}{v:g}" if isinstance(v, float) else f"{t}-{Path(v).stem}" for t, v in (labelled or {}).items()]
    return "-labelled-" + "-".join(parts) if parts else ""


def _recipe_trials(exp: Experiment, n: Any) -> int:
    """A recipe's ``study.trials``: a number, or ``grid`` for every point of its grid."""
    return len(exp.grid_points()) if n == "grid" else int(n)
