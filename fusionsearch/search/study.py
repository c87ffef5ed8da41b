"""The study: its settings, sampler and pruner, the queue of baselines and slots, and the grid.

``prepare_study`` creates (or resumes) a study and queues the baselines and one empty slot per
requested trial under the storage's lock, so two ``run`` commands at once queue one set; the
sampler fills an empty slot when a worker takes it. Grid studies queue every point with its
values fixed. ``load_study`` is what a worker on another machine needs: the study with the
recipe and settings stored in it.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict

import optuna
from optuna.trial import TrialState

from fusionsearch.data.partial import check_id_files
from fusionsearch.errors import FusionSearchError
from fusionsearch.experiment.experiment import Experiment
from fusionsearch.experiment.recipe import Recipe
from fusionsearch.nets.plan import StitchPlan
from fusionsearch.plugins import loaded_plugins, require_plugins
from fusionsearch.search.confirm import confirm_seeds, queue_confirmation
from fusionsearch.search.jobs import Baseline, ConfirmRun, Job, Slot, SupernetTraining, WarmStartJob
from fusionsearch.search.optuna_internals import storage_of
from fusionsearch.search.queueing import requeue_failed
from fusionsearch.search.records import StudyRecord
from fusionsearch.search.requeue import retry
from fusionsearch.search.seeding import JobSeeded
from fusionsearch.search.settings import (
    METRIC_NAMES,
    StudySettings,
)
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
from fusionsearch.search.supernet_space import supernet_space

__all__ = [
    "make_sampler",
    "make_pruner",
    "trial_steps",
    "rungs",
    "prepare_study",
    "check_study",
    "prepare_confirmation",
    "load_study",
]


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
    """Create or resume a study: its recipe and settings stored, its baselines and trials queued.

    Queues the baselines and trial slots that are not there yet, and queues again the trials an
    accident failed (``recovery``). Safe to call from several processes at once (two ``run``
    commands on one new database): the whole read-then-write runs under the storage's lock, so
    the second finds the first's slots and adds none; each slot has a fixed ``slot`` number.

    Args:
        recipe: the study's set-up (``load_recipe``).
        settings: its name, storage, trial count and the rest (stored with the study).
        experiment: the recipe made concrete, where the caller has one (its traced backbone
            gives the cut points); else made here.
    """
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
    storage = open_storage(settings.storage, on_stale=retry)
    study = optuna.create_study(
        study_name=settings.study,
        storage=storage,
        load_if_exists=True,
        directions=settings.directions(),  # type: ignore[arg-type]  # "maximize"/"minimize" strings
        sampler=make_sampler(settings, recipe),
        pruner=make_pruner(settings, recipe),
    )
    stored = StudyRecord(study)
    old = stored.recipe
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
        if stored.objectives([]) != settings.objectives:
            raise FusionSearchError(f"study {settings.study!r} has other objectives: choose another --study name")
    ids = check_id_files(stored.id_files, recipe.data.get("labelled"), settings.study)
    stored.recipe = recipe.to_dict()
    stored.id_files = ids  # the content of each id file, not only its path
    stored.plugins = loaded_plugins()  # what a worker loads before it reads the recipe
    stored.settings = {**asdict(settings), "storage": redact(settings.storage)}
    with warnings.catch_warnings():  # "experimental" since Optuna 3.2; nothing the user can act on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([METRIC_NAMES[o] for o in settings.objectives])
    stored.delta_m_convention = recipe.gain.describe()
    _queue_search(study, recipe, settings, exp)
    requeue_failed(study)
    return study


def _queue_search(study: optuna.Study, recipe: Recipe, settings: StudySettings, exp: Experiment) -> None:
    """Queue the search's jobs that are not there yet: the warm start, the baselines, the
    supernet (``search.mode: supernet``: one training for placement x unit; its best plans fill
    the slots), then one slot per trial, or a grid's points, each with all its values fixed."""
    space = recipe.space
    warm = [WarmStartJob()] if space.warm else []
    for job in [*warm, *(Baseline(name) for name in settings.baselines)]:
        job.enqueue(study)
    if space.mode == "supernet":
        SupernetTraining().enqueue(study)
    if settings.sampler == "grid":
        for i, point in enumerate(exp.grid_points()):
            Slot(i).enqueue(study, params=point)
        return
    for i in range(settings.trials):
        Slot(i).enqueue(study)


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
        if not isinstance(Job.of(t), ConfirmRun)
    ]
    if left:
        return 0, f"the search has {len(left)} trials left: confirmation waits for them"
    per = settings.confirm_per
    if per is not None:  # a typo would otherwise confirm no searched plan at all, silently
        names = sorted({n for t in study.get_trials(deepcopy=False) if Job.of(t).sampled for n in t.params})
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
    """Open an existing study with the recipe and settings stored in it.

    What a worker on another machine needs. The plugins the study was made with are loaded first
    (``plugins.require_plugins``: one line if one is missing). The storage is opened to read: a
    file that is not there is an error, never a new database.

    Returns:
        ``(study, recipe, settings)``.
    """
    st = open_storage(storage, create=False, on_stale=retry)
    names = [s.study_name for s in optuna.get_all_study_summaries(st)]
    if name not in names:
        raise FusionSearchError(f"no study {name!r} in {redact(storage)}; studies there: {', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=name, storage=st)
    stored = StudyRecord(study)
    recipe_d = stored.recipe
    if recipe_d is None:
        raise FusionSearchError(f"study {name!r} was not made by fusionsearch (no recipe stored)")
    s = dict(stored.settings or {})
    s["storage"] = storage
    settings = StudySettings(**s)
    require_plugins(stored.plugins or [], f"study {name!r}")  # the recipe names what they register
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
