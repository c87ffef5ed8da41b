"""The study: its settings, sampler and pruner, the queue of baselines and slots, and the grid.

``prepare_study`` creates (or resumes) a study and queues the baselines and one empty slot per
requested trial under the storage's lock, so two ``run`` commands at once queue one set; the
sampler fills an empty slot when a worker takes it. Grid studies queue every point with its
values fixed. ``load_study`` is what a worker on another machine needs: the study with the
recipe and settings stored in it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from fusionsearch.data.partial import check_id_files
from fusionsearch.errors import FusionSearchError
from fusionsearch.experiment.experiment import BASELINES, WARMSTART, Experiment
from fusionsearch.experiment.recipe import Recipe
from fusionsearch.experiment.sections import MAX_SEED
from fusionsearch.nets.plan import StitchPlan
from fusionsearch.plugins import loaded_plugins, require_plugins
from fusionsearch.search.confirm import confirm_seeds, queue_confirmation
from fusionsearch.search.optuna_internals import storage_of
from fusionsearch.search.queueing import requeue_failed
from fusionsearch.search.seeding import JobSeeded
from fusionsearch.search.storage import (
    DEFAULT_STORAGE,
    artifact_dir,
    check_url,
    heartbeat_settings,
    open_storage,
    queue_lock,
    redact,
    study_lock,
)
from fusionsearch.search.supernet import SUPERNET
from fusionsearch.search.supernet_space import supernet_space

__all__ = [
    "StudySettings",
    "labelled_suffix",
    "OBJECTIVES",
    "METRIC_NAMES",
    "PRUNERS",
    "KEEP_NETS",
    "make_sampler",
    "make_pruner",
    "trial_steps",
    "rungs",
    "prepare_study",
    "check_study",
    "prepare_confirmation",
    "load_study",
]


# objective name -> maximise?
OBJECTIVES = {"delta_m": True, "params": False, "latency": False}


METRIC_NAMES = {"delta_m": "Delta-m (%)", "params": "parameters", "latency": "latency (ms)"}


PRUNERS = ("successive_halving", "hyperband", "median", "none")


KEEP_NETS = ("confirmed", "all")
MAX_TRIALS = 100_000  # queued slots: each is a row in the storage before anything runs


@dataclass
class StudySettings:
    """How the study runs; stored with the study so that workers on other machines agree."""

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
        return ["maximize" if OBJECTIVES[o] else "minimize" for o in self.objectives]


def labelled_suffix(labelled: Mapping[str, float | str] | None) -> str:
    """The default study name's tail for a labelling given on top of the recipe's (``seg=0.1``
    or ``seg=ids.txt``): another labelling is another study, not a resumption of this one."""
    parts = [f"{t}{v:g}" if isinstance(v, float) else f"{t}-{Path(v).stem}" for t, v in (labelled or {}).items()]
    return "-labelled-" + "-".join(parts) if parts else ""


def _recipe_trials(exp: Experiment, n: Any) -> int:
    """A recipe's ``study.trials``: a number, or ``grid`` for every point of its grid."""
    return len(exp.grid_points()) if n == "grid" else int(n)


def make_sampler(settings: StudySettings, recipe: Recipe) -> optuna.samplers.BaseSampler:
    """The study's sampler, drawing each trial from the study seed and the trial's job
    (``seeding.JobSeeded``): the same plans whichever worker, process or attempt draws them, so a
    resumed study samples what an uninterrupted one does."""
    startup = max(3, min(10, settings.trials // 3))

    def make(seed: int) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if settings.sampler in ("random", "grid"):  # a grid's values are queued with it (SearchSpace.grid_points)
                return optuna.samplers.RandomSampler(seed=seed)
            if settings.sampler == "nsga2":
                return optuna.samplers.NSGAIISampler(seed=seed)
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=startup, multivariate=True, group=True, constant_liar=True
            )

    return JobSeeded(make, settings.seed)


REDUCTION = 3  # successive halving and Hyperband keep the best third at each rung


def trial_steps(recipe: Recipe) -> int:
    """Training steps of a searched trial: ``finetune_steps`` when it starts from the trained
    single-task nets, the full ``train.steps`` from scratch."""
    space, steps = recipe.space, recipe.training.steps
    return space.finetune(steps) if space.baseline_init == "single" else steps


def rungs(recipe: Recipe, settings: StudySettings) -> list[int] | None:
    """Where searched trials are evaluated: the pruner's rungs (``eval_every`` x 3^k below the
    trial's budget) for successive halving and Hyperband, so no evaluation is spent where no
    decision reads it; None (every ``eval_every`` steps) otherwise."""
    if settings.pruner not in ("successive_halving", "hyperband") or settings.multi_objective:
        return None
    first, last = recipe.training.eval_every, trial_steps(recipe)
    out = []
    while first < last:
        out.append(first)
        first *= REDUCTION
    return out


def make_pruner(settings: StudySettings, recipe: Recipe) -> optuna.pruners.BasePruner:
    if settings.multi_objective or settings.pruner == "none":
        return optuna.pruners.NopPruner()
    cfg = recipe.training
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=cfg.eval_every)
    if settings.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.eval_every, reduction_factor=REDUCTION)
    return optuna.pruners.HyperbandPruner(
        min_resource=cfg.eval_every, max_resource=trial_steps(recipe), reduction_factor=REDUCTION
    )


def prepare_study(recipe: Recipe, settings: StudySettings, experiment: Experiment | None = None) -> optuna.Study:
    """Create (or resume) the study, store its recipe and settings, queue the baselines and trial
    slots that are not there yet, and queue again the trials an accident failed (``recovery``).

    Safe to call from several processes at once (two ``run`` commands on one new database): the
    whole read-then-write runs under the storage's lock, so the second finds the first's slots
    and adds none; each slot is identified by its fixed ``slot`` number. ``experiment``: the
    recipe's, where the caller has one (its traced backbone gives the points)."""
    exp = check_study(recipe, settings, experiment)
    check_url(settings.storage)
    with study_lock(settings.storage):
        return _prepare(recipe, settings, exp)


def check_study(recipe: Recipe, settings: StudySettings, experiment: Experiment | None = None) -> Experiment:
    """What only the traced backbone can tell, checked before any study or file exists: the
    backbone takes the recipe's ``backbone_args`` and traces, its candidate points exist, and
    ``confirm.per`` names a parameter of the search space (a typo would otherwise show only after
    the whole search had trained). ``experiment``: the recipe's, where the caller has one; the
    experiment checked is returned, its backbone traced, for the study to be prepared from."""
    heartbeat_settings()  # FUSIONSEARCH_HEARTBEAT=abc stops here, before the lock file exists
    exp = experiment or Experiment(recipe)
    exp.check_fusion_tasks(read_data=False)
    space = recipe.space
    points = exp.search_points()
    space.check_fixed(points)
    if space.mode == "supernet":
        supernet_space(space, points)  # a pin the supernet cannot share is refused now, not after the baselines
    for t in space.loss_weights:
        if t not in recipe.tasks:
            raise FusionSearchError(
                f"search.loss_weights names {t!r}, not a task of this study ({', '.join(recipe.tasks)})"
            )
    check_plan(exp.plan_from(recipe.plan), "plan")
    if settings.sampler == "grid" and space.mode == "supernet":
        raise FusionSearchError(
            "a grid study queues every plan itself: search.mode supernet needs the tpe, nsga2 or random sampler"
        )
    if settings.sampler == "grid":
        exp.grid_points()  # a range where the grid needs choices is named now, not after the database exists
    artefacts = artifact_dir(settings.storage, settings.artifacts)
    if artefacts.exists() and not artefacts.is_dir():
        raise FusionSearchError(f"the artefact folder {str(artefacts)!r} is a file: give --artifacts a folder")
    per = settings.confirm_per
    if per is not None:
        names = space.parameter_names(points)
        if per not in names:
            raise FusionSearchError(
                f"confirm per {per!r} is not a parameter of this study's search space; it has: {', '.join(names)}"
            )
    return exp


def _prepare(recipe: Recipe, settings: StudySettings, exp: Experiment) -> optuna.Study:
    storage = open_storage(settings.storage)
    study = optuna.create_study(
        study_name=settings.study,
        storage=storage,
        load_if_exists=True,
        directions=settings.directions(),  # type: ignore[arg-type]  # "maximize"/"minimize" strings
        sampler=make_sampler(settings, recipe),
        pruner=make_pruner(settings, recipe),
    )
    old = study.user_attrs.get("recipe")
    if old is not None:
        mine = recipe.to_dict()
        changed = [
            k
            for k in ("backbone", "tasks", "data", "backbone_args", "train", "search", "delta_m")
            if old.get(k, {} if k == "delta_m" else None) != mine.get(k)
        ]
        if changed:
            raise FusionSearchError(
                f"study {settings.study!r} in {redact(settings.storage)} was made with a different recipe"
                f" ({', '.join(changed)} differ): choose another --study name"
            )
        if study.user_attrs.get("settings", {}).get("objectives") != settings.objectives:
            raise FusionSearchError(f"study {settings.study!r} has other objectives: choose another --study name")
    ids = check_id_files(study.user_attrs.get("id_files"), recipe.data.get("labelled"), settings.study)
    study.set_user_attr("recipe", recipe.to_dict())
    study.set_user_attr("id_files", ids)  # the content of each id file, not only its path
    study.set_user_attr("plugins", loaded_plugins())  # what a worker loads before it reads the recipe
    study.set_user_attr("settings", {**asdict(settings), "storage": redact(settings.storage)})
    with warnings.catch_warnings():  # "experimental" since Optuna 3.2; nothing the user can act on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([METRIC_NAMES[o] for o in settings.objectives])
    study.set_user_attr("delta_m_convention", recipe.gain.describe())
    space = recipe.space
    warm = [WARMSTART] if space.warm else []
    for name in [*warm, *settings.baselines]:
        study.enqueue_trial({"baseline": name}, user_attrs={"baseline": name}, skip_if_exists=True)
    if space.mode == "supernet":  # one training for placement x unit; its best plans fill the slots
        study.enqueue_trial({SUPERNET: "train"}, user_attrs={SUPERNET: "train"}, skip_if_exists=True)
    if settings.sampler == "grid":
        for i, point in enumerate(exp.grid_points()):
            study.enqueue_trial(point, user_attrs={"slot": i}, skip_if_exists=True)
        requeue_failed(study)
        return study
    for i in range(settings.trials):
        study.enqueue_trial({"slot": i}, user_attrs={"slot": i}, skip_if_exists=True)
    requeue_failed(study)
    return study


def prepare_confirmation(study: optuna.Study, settings: StudySettings) -> tuple[int, str | None]:
    """Queue the confirmation once the search has finished; returns (trials added, why not).

    Safe from several processes (it runs under the storage's lock). While searched trials are
    still queued or running the winners are not known yet, so nothing is queued and the reason
    says so."""
    if settings.confirm_seeds == 0:
        return 0, "confirmation is off (--confirm 0)"
    if "delta_m" not in settings.objectives:
        return 0, "confirmation compares Delta-m, which this study does not measure"
    left = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        if "confirm" not in t.user_attrs
    ]
    if left:
        return 0, f"the search has {len(left)} trials left: confirmation waits for them"
    per = settings.confirm_per
    if per is not None:  # a typo would otherwise confirm no searched plan at all, silently
        names = sorted({n for t in study.get_trials(deepcopy=False) if "slot" in t.user_attrs for n in t.params})
        if names and per not in names:
            return 0, f"confirm per {per!r}: no searched trial has that parameter (they have: {', '.join(names)})"
    seeds = confirm_seeds(settings.seed, settings.confirm_seeds)
    with queue_lock(storage_of(study)):  # two commands finishing together queue it once
        added = queue_confirmation(study, settings.baselines, settings.confirm_top, seeds, settings.confirm_per)
        return added, None


def check_plan(plan: StitchPlan, where: str) -> None:
    """Each point's unit is registered and takes the plan's arguments (``validation.check_call``)."""
    from fusionsearch.nets.fusion import get_fusion
    from fusionsearch.validation import check_call

    # the main unit even without points: the papers' baseline (UNIT_default) puts it at every boundary
    units = [(plan.unit, dict(plan.unit_args))] + [plan.unit_for(str(p)) for p in plan.per_point]
    for name, args in units:
        check_call(get_fusion(name), args, f"{where}.unit_args", FusionSearchError, given=("channels", "layout"))


def load_study(name: str, storage: str = DEFAULT_STORAGE) -> tuple[optuna.Study, Recipe, StudySettings]:
    """An existing study with its recipe and settings (what a worker on another machine needs),
    after the plugins it was made with (``plugins.require_plugins``: one line if one is missing)."""
    st = open_storage(storage, create=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(st)]
    if name not in names:
        raise FusionSearchError(f"no study {name!r} in {redact(storage)}; studies there: {', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=name, storage=st)
    recipe_d = study.user_attrs.get("recipe")
    if recipe_d is None:
        raise FusionSearchError(f"study {name!r} was not made by fusionsearch (no recipe stored)")
    s = dict(study.user_attrs.get("settings", {}))
    s["storage"] = storage
    settings = StudySettings(**s)
    require_plugins(study.user_attrs.get("plugins", []), f"study {name!r}")  # the recipe names what they register
    recipe = Recipe.from_dict(recipe_d)
    return (
        optuna.load_study(
            study_name=name,
            storage=st,
            # each trial's draws are the study seed's and its job's, never the process's or the
            # worker's: a resumed study samples the plans an uninterrupted one does
            sampler=make_sampler(settings, recipe),
            pruner=make_pruner(settings, recipe),
        ),
        recipe,
        settings,
    )
