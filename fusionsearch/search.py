"""The study: baselines, sampled plans, pruning, workers, failures and artefacts.

Work is handed out as queue slots. ``prepare_study`` enqueues the baselines and one empty slot
per requested trial, under the storage's lock (so two ``run`` commands at once queue one set);
workers pop WAITING trials under the same lock and never create trials of their own, so N workers
on any storage run exactly the requested number of trials. An empty slot fixes nothing: the
sampler fills it. Failed trials that an accident (not the plan) failed come back as copies: see
``recovery``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from .confirm import confirm_seeds, queue_confirmation
from .errors import DependencyError, FusionSearchError
from .experiment import BASELINES, WARMSTART, Experiment, WarmStart
from .fusion import fusion_weights
from .recipe import Recipe
from .recovery import INTERRUPTED, PLAN, failed_for_good, failure_kind, requeue_failed, retry
from .space import SearchSpace
from .stitch import StitchPlan
from .storage import DEFAULT_STORAGE, HEARTBEAT_INTERVAL, artifact_store, check_url, open_storage, redact, study_lock

__all__ = [
    "StudySettings",
    "prepare_study",
    "prepare_confirmation",
    "load_study",
    "run_worker",
    "OBJECTIVES",
    "single_metrics",
    "is_baseline",
    "fusion_weights",
]

optuna.logging.set_verbosity(optuna.logging.WARNING)

# objective name -> maximise?
OBJECTIVES = {"delta_m": True, "params": False, "latency": False}
METRIC_NAMES = {"delta_m": "Delta-m (%)", "params": "parameters", "latency": "latency (ms)"}
PRUNERS = ("successive_halving", "hyperband", "median", "none")
KEEP_NETS = ("confirmed", "all")


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
        if self.trials < 0:
            raise FusionSearchError(f"trials must be >= 0, got {self.trials}")
        if self.confirm_top < 0 or self.confirm_seeds < 0:
            raise FusionSearchError("confirm top and seeds must be >= 0")
        if self.keep_nets not in KEEP_NETS:
            raise FusionSearchError(f"unknown keep_nets {self.keep_nets!r}: {', '.join(KEEP_NETS)}")

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def directions(self) -> list[str]:
        return ["maximize" if OBJECTIVES[o] else "minimize" for o in self.objectives]


def make_sampler(settings: StudySettings, recipe: Recipe, worker_seed: int = 0) -> optuna.samplers.BaseSampler:
    seed = settings.seed * 1000 + worker_seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if settings.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if settings.sampler == "grid":  # every trial's values are queued with it (see grid_points)
            return optuna.samplers.RandomSampler(seed=seed)
        if settings.sampler == "nsga2" or (settings.multi_objective and settings.sampler != "tpe"):
            return optuna.samplers.NSGAIISampler(seed=seed)
        startup = max(3, min(10, settings.trials // 3))
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup, multivariate=True, group=True, constant_liar=True
        )


REDUCTION = 3  # successive halving and Hyperband keep the best third at each rung


def trial_steps(recipe: Recipe) -> int:
    """Training steps of a searched trial: ``finetune_steps`` when it starts from the trained
    single-task nets, the full ``train.steps`` from scratch."""
    space = SearchSpace.from_dict(recipe.search)
    steps = recipe.train_config().steps
    return space.finetune(steps) if space.baseline_init == "single" else steps


def rungs(recipe: Recipe, settings: StudySettings) -> list[int] | None:
    """Where searched trials are evaluated: the pruner's rungs (``eval_every`` x 3^k below the
    trial's budget) for successive halving and Hyperband, so no evaluation is spent where no
    decision reads it; None (every ``eval_every`` steps) otherwise."""
    if settings.pruner not in ("successive_halving", "hyperband") or settings.multi_objective:
        return None
    first, last = recipe.train_config().eval_every, trial_steps(recipe)
    out = []
    while first < last:
        out.append(first)
        first *= REDUCTION
    return out


def make_pruner(settings: StudySettings, recipe: Recipe) -> optuna.pruners.BasePruner:
    if settings.multi_objective or settings.pruner == "none":
        return optuna.pruners.NopPruner()
    cfg = recipe.train_config()
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=cfg.eval_every)
    if settings.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.eval_every, reduction_factor=REDUCTION)
    return optuna.pruners.HyperbandPruner(
        min_resource=cfg.eval_every, max_resource=trial_steps(recipe), reduction_factor=REDUCTION
    )


def prepare_study(recipe: Recipe, settings: StudySettings) -> optuna.Study:
    """Create (or resume) the study, store its recipe and settings, queue the baselines and trial
    slots that are not there yet, and queue again the trials an accident failed (``recovery``).

    Safe to call from several processes at once (two ``run`` commands on one new database): the
    whole read-then-write runs under the storage's lock, so the second finds the first's slots
    and adds none; each slot is identified by its fixed ``slot`` number."""
    check_url(settings.storage)
    with study_lock(settings.storage):
        return _prepare(recipe, settings)


def _prepare(recipe: Recipe, settings: StudySettings) -> optuna.Study:
    storage = open_storage(settings.storage)
    study = optuna.create_study(
        study_name=settings.study,
        storage=storage,
        load_if_exists=True,
        directions=settings.directions(),
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
    study.set_user_attr("recipe", recipe.to_dict())
    study.set_user_attr("settings", {**asdict(settings), "storage": redact(settings.storage)})
    study.set_metric_names([METRIC_NAMES[o] for o in settings.objectives])
    study.set_user_attr("delta_m_convention", recipe.gain.describe())
    warm = [WARMSTART] if SearchSpace.from_dict(recipe.search).warm else []
    for name in [*warm, *settings.baselines]:
        study.enqueue_trial({"baseline": name}, user_attrs={"baseline": name}, skip_if_exists=True)
    if settings.sampler == "grid":
        for i, point in enumerate(grid_points(recipe)):
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
    seeds = confirm_seeds(settings.seed, settings.confirm_seeds)
    with _queue_lock(study._storage):  # two commands finishing together queue it once
        return queue_confirmation(study, settings.baselines, settings.confirm_top, seeds), None


def grid_points(recipe: Recipe) -> list[dict[str, Any]]:
    """Every combination of the recipe's choice lists, in a fixed order. A grid study queues each
    with all its values fixed, so N workers run each point exactly once (Optuna's GridSampler
    picks points at random and may repeat one under parallel workers)."""
    import itertools

    space = SearchSpace.from_dict(recipe.search)
    points = Experiment(recipe).points(space.points)
    grid = space.grid(points)
    names = list(grid)
    out: list[dict[str, Any]] = []
    for values in itertools.product(*(grid[n] for n in names)):
        point = space.effective(dict(zip(names, values)), points)
        if point not in out:  # choices define-by-run never reads make no new trial
            out.append(point)
    return out


def load_study(name: str, storage: str = DEFAULT_STORAGE) -> tuple[optuna.Study, Recipe, StudySettings]:
    """An existing study with its recipe and settings (what a worker on another machine needs)."""
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
    recipe = Recipe.from_dict(recipe_d)
    return (
        optuna.load_study(
            study_name=name,
            storage=st,
            sampler=make_sampler(settings, recipe, os.getpid()),
            pruner=make_pruner(settings, recipe),
        ),
        recipe,
        settings,
    )


def is_baseline(t: optuna.trial.FrozenTrial) -> str | None:
    return t.user_attrs.get("baseline")


def is_reference(t: optuna.trial.FrozenTrial, confirm: bool, seed: int | None) -> bool:
    """The single-task run that Delta-m of a trial is measured against: the ``single`` baseline in
    the search, the confirmation's ``single`` with the same seed in the confirmation."""
    if confirm:
        return t.user_attrs.get("confirm") == "single" and t.user_attrs.get("seed") == seed
    return t.user_attrs.get("baseline") == "single"


def _find(study: optuna.Study, match: Callable[[Any], bool]) -> tuple[Any, bool]:
    """The complete trial that ``match`` picks, and whether one may still come (queued or running)."""
    pending = False
    for t in study.get_trials(deepcopy=False):
        if match(t):
            if t.state == TrialState.COMPLETE:
                return t, False
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                pending = True
    return None, pending


def single_metrics(
    study: optuna.Study, confirm: bool = False, seed: int | None = None
) -> tuple[dict[str, Any] | None, bool]:
    """The single-task reference's final metrics and its evaluations, and whether it may still come."""
    t, pending = _find(study, lambda t: is_reference(t, confirm, seed))
    if t is None:
        return None, pending
    return {"metrics": t.user_attrs["metrics"], "evals": t.user_attrs.get("evals", [])}, False


def _reference(single: Mapping[str, Any], step: int) -> Mapping[str, Any]:
    """The single-task metrics at the same step (fair for pruning early), else its final ones."""
    for e in single.get("evals", []):
        if e["step"] == step:
            return e["metrics"]
    return single["metrics"]


def _rank(t: optuna.trial.FrozenTrial) -> int:
    """Queue order: the warm start that all others begin from, the single-task reference, the
    other baselines, sampled slots, then each seed's confirmation reference before its plans."""
    b, c = t.user_attrs.get("baseline"), t.user_attrs.get("confirm")
    if b is not None:
        return 0 if b == WARMSTART else 1 if b == "single" else 2
    if c is not None:
        return 4 if c == "single" else 5
    return 3


class _Heartbeat:
    """Records the trial's heartbeat in the storage while it runs (Optuna's own thread is tied to
    ``study.optimize``, which creates trials; our workers only pop queued ones)."""

    def __init__(self, storage: Any, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeat:
        if heartbeat_interval(self.storage):
            self.storage.record_heartbeat(self.trial_id)
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.wait(heartbeat_interval(self.storage) or HEARTBEAT_INTERVAL):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a missed beat is retried on the next tick
                pass

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def _pop(study: optuna.Study, match: Callable[[Any], bool] | None = None) -> optuna.Trial | None:
    """Take one WAITING trial (atomically: a trial another worker took is skipped) in ``_rank``
    order; with ``match``, only a trial it picks."""
    storage = study._storage
    with _queue_lock(storage):
        waiting = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))
        waiting = sorted(waiting, key=lambda t: (_rank(t), t.number))
        if match is not None:
            waiting = [t for t in waiting if match(t)]
        for t in waiting:
            try:
                if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                    return optuna.Trial(study, t._trial_id)
            except RuntimeError:  # finished meanwhile
                continue
    return None


def storage_url(storage: Any) -> str | None:
    """The URL (or ``journal:PATH``) of an opened storage, behind Optuna's cache, for ``study_lock``."""
    backend = getattr(storage, "_backend", storage)
    engine = getattr(backend, "engine", None)
    if engine is not None:
        return engine.url.render_as_string(hide_password=False)
    path = getattr(getattr(backend, "_backend", None), "_file_path", None)
    return f"journal:{path}" if path else None


@contextlib.contextmanager
def _queue_lock(storage: Any) -> Iterator[None]:
    """One read-and-claim at a time among the processes sharing a storage. SQLite has no row
    locks (``SELECT ... FOR UPDATE`` is ignored), so two workers could both see a trial WAITING
    and both take it, or one fail with "database is locked" on a stale snapshot (seen under load
    with two workers); re-queueing a failed trial is check-then-act on every storage."""
    url = storage_url(storage)
    if url is None:
        yield
        return
    with study_lock(url):
        yield


def _latency_ms(net: Any, size: tuple[int, int, int], device: torch.device) -> float:
    net.eval()
    x = torch.randn(1, *size, device=device)
    times = []
    with torch.no_grad():
        for i in range(7):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            net(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def failure_reason(e: BaseException) -> str:
    if isinstance(e, torch.OutOfMemoryError):
        return f"out of memory: {str(e).splitlines()[0] if str(e) else 'allocation failed'}"
    return f"{type(e).__name__}: {e}"


class Objective:
    """Trains one queued trial: the warm start, a baseline, a sampled plan or a confirmation run.

    Warm-started trials (``search.column_init: single``, the default) begin from the study's
    trained single-task nets (columns and heads) and train ``finetune_steps``; the baselines they
    are compared with start there too and train as long. Every trial of the search uses the study
    seed (the same data order and the same draws for new modules); a confirmation trial uses its own.
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
    ) -> None:
        self.study, self.recipe, self.settings = study, recipe, settings
        self.exp = Experiment(recipe, settings.seed)
        self.space = SearchSpace.from_dict(recipe.search)
        self.device = device
        self.progress = progress
        self.before_trial = before_trial
        self.wait_s = wait_s
        self.store = artifact_store(settings.storage, settings.artifacts)
        self.execute: Callable[[optuna.Trial], None] | None = None  # set by run_worker
        self.rungs = rungs(recipe, settings)
        self._warm: WarmStart | None = None

    def _await(self, match: Callable[[Any], bool], what: str) -> Any:
        """The complete trial ``match`` picks. Waiting for it, this worker runs it itself if it is
        queued (e.g. retried after its worker died): nobody else may be left to. One that an
        accident failed is queued again first; one that failed for good is a DependencyError."""
        while True:
            t, pending = _find(self.study, match)
            if t is not None:
                return t
            if not pending:
                if requeue_failed(self.study):
                    continue
                raise DependencyError(self._dependency_failed(match, what))
            reap_stale(self.study)
            queued = _pop(self.study, match) if self.execute is not None else None
            if queued is not None:
                self.execute(queued)  # type: ignore[misc]
                continue
            time.sleep(self.wait_s)

    def _dependency_failed(self, match: Callable[[Any], bool], what: str) -> str:
        failed = [t for t in self.study.get_trials(deepcopy=False) if match(t) and t.state == TrialState.FAIL]
        why = f" (trial {failed[-1].number}: {failed[-1].user_attrs.get('fail_reason', 'failed')})" if failed else ""
        return (
            f"{what} failed for good{why}, so the other trials of study {self.settings.study!r} cannot be"
            " measured; fix the cause and start a new study (another --study name)"
        )

    def blocked(self) -> str | None:
        """Why no trial of this study can be measured any more (the warm start or the search's
        single-task reference failed for good), or None; a worker checks before it takes one."""
        fake = type("Queued", (), {"user_attrs": {"slot": -1}})()
        try:
            self.check_dependencies(fake)
        except DependencyError as e:
            return str(e)
        return None

    def check_dependencies(self, trial: Any) -> None:
        """Before a trial trains: the trials it will need (the warm start, the single-task
        reference) must be complete, pending, or coming back; a sampled plan never trains for
        nothing after its reference failed for good."""
        attrs = trial.user_attrs
        baseline, confirm = attrs.get("baseline"), attrs.get("confirm")
        needs: list[tuple[Callable[[Any], bool], str]] = []
        if baseline != WARMSTART and self.space.warm:
            needs.append((lambda t: is_baseline(t) == WARMSTART, "the warm start (single-task nets)"))
        own = baseline in ("single", WARMSTART) or confirm == "single"
        if "delta_m" in self.settings.objectives and not own:
            seed = attrs.get("seed")
            needs.append((lambda t: is_reference(t, confirm is not None, seed), "the single-task reference"))
        for match, what in needs:
            trials = self.study.get_trials(deepcopy=False)
            mine = [t for t in trials if match(t)]
            if mine and all(failed_for_good(t, trials) for t in mine):
                if requeue_failed(self.study):
                    continue
                raise DependencyError(self._dependency_failed(match, what))

    def single(self, wait: bool, confirm: bool = False, seed: int | None = None) -> dict[str, Any] | None:
        """The single-task reference's results (the search's, or the confirmation's for ``seed``)."""
        ref, _ = single_metrics(self.study, confirm, seed)
        if ref is not None or not wait:
            return ref
        self._await(lambda t: is_reference(t, confirm, seed), "the single-task reference: Delta-m is undefined")
        return single_metrics(self.study, confirm, seed)[0]

    def warm_start(self) -> WarmStart:
        """The trained single-task nets every warm-started trial begins from (downloaded once per
        worker from the artefact store, so workers on other machines get them too)."""
        if self._warm is None:
            from optuna.artifacts import download_artifact

            from .stitch import load

            done = self._await(lambda t: is_baseline(t) == WARMSTART, "the warm start (single-task nets)")
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "warmstart.pt"
                download_artifact(
                    artifact_store=self.store, file_path=str(path), artifact_id=done.user_attrs["model_artifact"]
                )
                self._warm = WarmStart.of(load(path, trust=True))  # written by a worker of this study
        return self._warm

    def _what(self, trial: optuna.Trial) -> tuple[StitchPlan, dict[str, float] | None, float | None, str]:
        """(plan, loss weights, base lr, column start) of a trial of any kind."""
        attrs = trial.user_attrs
        baseline, confirm = attrs.get("baseline"), attrs.get("confirm")
        if baseline == WARMSTART:
            return self.exp.baseline_plan("single"), None, None, "scratch"
        if baseline is not None:
            return self.exp.baseline_plan(baseline), None, None, self.space.baseline_init
        if confirm is not None:
            if "source" not in attrs:
                return self.exp.baseline_plan(confirm), None, None, self.space.baseline_init
            src = self.study.get_trials(deepcopy=False)[attrs["source"]].user_attrs
            return (
                StitchPlan.from_dict(src["plan"]),
                src.get("loss_weights"),
                src.get("base_lr"),
                src.get("column_init", self.space.baseline_init),
            )
        s = self.space.sample(trial, self.exp.points(self.space.points), len(self.recipe.tasks))
        return s.plan, s.loss_weights or None, s.base_lr, s.column_init

    def __call__(self, trial: optuna.Trial) -> list[float]:
        self.check_dependencies(trial)
        if self.before_trial is not None:
            self.before_trial(trial)
        baseline, confirm = trial.user_attrs.get("baseline"), trial.user_attrs.get("confirm")
        seed = int(trial.user_attrs.get("seed", self.settings.seed))
        cfg = self.recipe.train_config(seed=seed)
        plan, weights, base_lr, column_init = self._what(trial)
        if base_lr is not None:
            cfg.base_lr = base_lr
        start = None
        if column_init == "single":
            start = self.warm_start()
            cfg.steps = self.space.finetune(cfg.steps)
            cfg.base_lr *= self.space.finetune_lr_mult
        # only the last evaluation is read for the warm start and the confirmation; the search
        # evaluates at the pruner's rungs (or where the recipe's train.eval_steps says)
        if baseline == WARMSTART or confirm is not None:
            cfg.eval_steps = []
        elif self.rungs is not None:
            cfg.eval_steps = self.rungs
        trial.set_user_attr("plan", _jsonable(plan.to_dict()))
        trial.set_user_attr("column_init", column_init)
        if weights:
            trial.set_user_attr("loss_weights", weights)
        if base_lr is not None:
            trial.set_user_attr("base_lr", base_lr)
        prune = not self.settings.multi_objective and baseline is None and confirm is None
        measured = "delta_m" in self.settings.objectives and baseline != WARMSTART

        def report(step: int, metrics: dict[str, dict[str, float]]) -> None:
            trial.set_user_attr("step", step)
            if self.settings.multi_objective or not measured or confirm is not None:
                return
            ref = {"metrics": metrics, "evals": []} if baseline == "single" else self.single(wait=False)
            if ref is None:
                return
            trial.report(self.exp.delta_m(metrics, _reference(ref, step)), step)
            # only sampled plans compete at the rungs: a warm-started plan starts below the
            # single-task nets it came from, so with the baselines as the bar at 4 steps every
            # plan was stopped and the confirmation had no searched plan to check
            if prune and step < cfg.steps and trial.should_prune():  # a finished plan is never "pruned"
                raise optuna.TrialPruned(f"pruned at step {step}")

        result = self.exp.train(
            plan,
            cfg=cfg,
            loss_weights=weights,
            device=self.device,
            callback=report,
            progress=self.progress,
            start=start,
        )
        params = sum(p.numel() for p in result.net.parameters())
        trial.set_user_attr("metrics", result.metrics)
        trial.set_user_attr("evals", result.history["evals"])
        trial.set_user_attr("params", params)
        trial.set_user_attr("steps", result.step)
        self._save_artifacts(trial, result.net)
        values: list[float] = []
        for o in self.settings.objectives:
            if o == "delta_m":
                if baseline == WARMSTART:  # the others' start, not a competitor: no Delta-m, ranked nowhere
                    values.append(0.0)
                    continue
                own = (baseline == "single") or (confirm == "single")
                ref = {"metrics": result.metrics} if own else self.single(True, confirm is not None, seed)
                assert ref is not None
                dm = self.exp.delta_m(result.metrics, ref["metrics"])
                trial.set_user_attr("delta_m", dm)
                values.append(dm)
            elif o == "params":
                values.append(float(params))
            else:
                dev = next(result.net.parameters()).device
                ms = _latency_ms(result.net, self.exp.input_size, dev)
                trial.set_user_attr("latency_ms", ms)
                values.append(ms)
        del result
        return values

    def _keeps_net(self, trial: optuna.Trial) -> bool:
        """Nets kept (~90 MB each for two resnet18 columns): the warm start (every worker's start),
        the first confirmation seed of each baseline and confirmed plan (what ``best`` exports),
        or the search's baselines when there is no confirmation; ``keep_nets: all`` keeps all."""
        attrs = trial.user_attrs
        if self.settings.keep_nets == "all" or attrs.get("baseline") == WARMSTART or attrs.get("keep_net"):
            return True
        return "baseline" in attrs and self.settings.confirm_seeds == 0

    def _save_artifacts(self, trial: optuna.Trial, net: Any) -> None:
        from optuna.artifacts import upload_artifact

        from .stitch import save

        with tempfile.TemporaryDirectory() as d:
            if self._keeps_net(trial):
                model = Path(d) / f"trial-{trial.number}.pt"
                save(net.cpu(), model)
                trial.set_user_attr(
                    "model_artifact",
                    upload_artifact(
                        artifact_store=self.store,
                        file_path=str(model),
                        study_or_trial=trial,
                        mimetype="application/octet-stream",
                    ),
                )
            if net.fusion_units():  # a few kB: kept for every trial (the report draws them)
                fw = Path(d) / f"trial-{trial.number}-fusion.json"
                fw.write_text(json.dumps(fusion_weights(net)))
                trial.set_user_attr(
                    "fusion_artifact",
                    upload_artifact(artifact_store=self.store, file_path=str(fw), study_or_trial=trial),
                )


def _jsonable(d: Any) -> Any:
    return json.loads(json.dumps(d, default=list))


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
) -> int:
    """Run queued trials of a study until none are left (or ``timeout`` / ``max_trials``); returns
    how many this worker ran. Failures (out of memory, NaN loss, a bad plan) fail that trial with
    its reason and the worker goes on."""
    study, recipe, settings = load_study(study_name, storage)
    timeout = settings.timeout if timeout is None else timeout
    if artifacts is not None:
        settings.artifacts = artifacts
    objective = Objective(study, recipe, settings, device, progress, before_trial)
    log = log or (lambda s: None)

    def execute(trial: optuna.Trial) -> None:
        label = trial_label(trial)
        log(f"{label}: started on {device}")
        with _Heartbeat(study._storage, trial._trial_id):
            try:
                values = objective(trial)
            except optuna.TrialPruned as e:
                study.tell(trial, state=TrialState.PRUNED)
                log(f"{label}: {e}")
                return
            except (KeyboardInterrupt, SystemExit, DependencyError) as e:
                # no verdict on the plan: queue it again now, then stop this worker
                kind = failure_kind(e)
                reason = "interrupted (queued again)" if kind == INTERRUPTED else f"{e} (queued again)"
                _fail(study, trial, reason, kind, requeue=True)
                raise
            except Exception as e:
                reason, kind = failure_reason(e), failure_kind(e)
                _fail(study, trial, reason, kind)
                again = "" if kind == PLAN else " (an accident, not the plan's: the next run queues it again)"
                log(f"{label}: failed: {reason}{again}")
                _free_memory()
                return
        study.tell(trial, values if len(values) > 1 else values[0])
        log(f"{label}: done, " + ", ".join(f"{o}={v:.4g}" for o, v in zip(settings.objectives, values)))
        _free_memory()

    objective.execute = execute
    requeue_failed(study)  # what an accident failed last time comes back before anything else runs
    start, ran = time.monotonic(), 0
    with _terminate_as_interrupt():
        while max_trials is None or ran < max_trials:
            if timeout is not None and time.monotonic() - start > timeout:
                log("timeout reached")
                break
            reap_stale(study)
            why = objective.blocked()
            if why is not None:
                raise DependencyError(why)
            trial = _pop(study)
            if trial is None:
                if any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)) and _stale_possible(
                    study
                ):
                    time.sleep(1.0)  # a dead worker's trial may come back to the queue
                    continue
                break
            ran += 1
            execute(trial)
    return ran


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str, kind: str, requeue: bool = False) -> None:
    """Fail ``trial`` with its reason and kind (``recovery``); with ``requeue``, queue its copy now."""
    trial.set_user_attr("fail_reason", reason)
    trial.set_user_attr("fail_kind", kind)
    frozen = study.tell(trial, state=TrialState.FAIL)
    if requeue:
        with _queue_lock(study._storage):
            retry(study, frozen)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's stop, ``run`` stopping its workers) is handled as Ctrl-C:
    the running trial is failed as interrupted and queued again instead of left RUNNING."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def trial_label(t: Any) -> str:
    """``warmstart``, ``single``, ``trial 7`` or ``confirm trial 7 (seed 1002)`` for log lines."""
    a = t.user_attrs
    if a.get("confirm") is not None:
        return f"confirm {a['confirm']} (seed {a['seed']})"
    return a.get("baseline") or f"trial {t.number}"


def reap_stale(study: optuna.Study) -> None:
    """Fail trials whose worker stopped beating; Optuna's retry callback queues a copy of each."""
    if heartbeat_interval(study._storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


def _stale_possible(study: optuna.Study) -> bool:
    """Whether some RUNNING trial could still turn out to be a dead worker's (heartbeats on)."""
    return heartbeat_interval(study._storage) is not None


def heartbeat_interval(storage: Any) -> int | None:
    """The storage's heartbeat interval (RDB storages, also behind Optuna's cache), or None."""
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get is not None else None
