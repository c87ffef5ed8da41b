"""The study: baselines, sampled plans, pruning, workers, failures and artefacts.

Work is handed out as queue slots. ``prepare_study`` (run once, by one process) enqueues the
baselines and one empty slot per requested trial; workers pop WAITING trials with the storage's
atomic state change and never create trials of their own, so N workers on any storage run
exactly the requested number of trials. An empty slot fixes nothing: the sampler fills it. A dead
worker's trial is failed by heartbeat and Optuna's retry callback puts a copy back in the queue.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from .errors import FusionSearchError
from .experiment import BASELINES, Experiment
from .recipe import Recipe
from .space import SearchSpace
from .storage import DEFAULT_STORAGE, HEARTBEAT_INTERVAL, artifact_store, open_storage, redact

__all__ = [
    "StudySettings",
    "prepare_study",
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

    def __post_init__(self) -> None:
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad:
            raise FusionSearchError(f"unknown objective(s) {bad}; choose from {', '.join(OBJECTIVES)}")
        if "delta_m" in self.objectives and "single" not in self.baselines:
            raise FusionSearchError("the delta_m objective needs the 'single' baseline")
        if self.sampler not in ("tpe", "nsga2", "random", "grid"):
            raise FusionSearchError(f"unknown sampler {self.sampler!r}: tpe, nsga2, random or grid")
        if self.pruner not in ("hyperband", "median", "none"):
            raise FusionSearchError(f"unknown pruner {self.pruner!r}: hyperband, median or none")
        if self.trials < 0:
            raise FusionSearchError(f"trials must be >= 0, got {self.trials}")

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


def make_pruner(settings: StudySettings, recipe: Recipe) -> optuna.pruners.BasePruner:
    if settings.multi_objective or settings.pruner == "none":
        return optuna.pruners.NopPruner()
    cfg = recipe.train_config()
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=cfg.eval_every)
    return optuna.pruners.HyperbandPruner(min_resource=cfg.eval_every, max_resource=cfg.steps, reduction_factor=3)


def prepare_study(recipe: Recipe, settings: StudySettings) -> optuna.Study:
    """Create (or resume) the study, store its recipe and settings, and enqueue the baselines and
    trial slots that are not there yet. Call from one process only."""
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
            k for k in ("backbone", "tasks", "data", "backbone_args", "train", "search") if old.get(k) != mine.get(k)
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
    for name in settings.baselines:
        study.enqueue_trial({"baseline": name}, user_attrs={"baseline": name}, skip_if_exists=True)
    if settings.sampler == "grid":
        for i, point in enumerate(grid_points(recipe)):
            study.enqueue_trial(point, user_attrs={"slot": i}, skip_if_exists=True)
        return study
    for i in range(settings.trials):
        study.enqueue_trial({"slot": i}, user_attrs={"slot": i}, skip_if_exists=True)
    return study


def grid_points(recipe: Recipe) -> list[dict[str, Any]]:
    """Every combination of the recipe's choice lists, in a fixed order. A grid study queues each
    with all its values fixed, so N workers run each point exactly once (Optuna's GridSampler
    picks points at random and may repeat one under parallel workers)."""
    import itertools

    space = SearchSpace.from_dict(recipe.search)
    grid = space.grid(Experiment(recipe).points(space.points))
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def load_study(name: str, storage: str = DEFAULT_STORAGE) -> tuple[optuna.Study, Recipe, StudySettings]:
    """An existing study with its recipe and settings (what a worker on another machine needs)."""
    st = open_storage(storage)
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


def single_metrics(study: optuna.Study) -> tuple[dict[str, Any] | None, bool]:
    """The single-task baseline's final metrics and its evaluations, and whether it may still come."""
    pending = False
    for t in study.get_trials(deepcopy=False):
        if is_baseline(t) == "single":
            if t.state == TrialState.COMPLETE:
                return {"metrics": t.user_attrs["metrics"], "evals": t.user_attrs.get("evals", [])}, False
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                pending = True
    return None, pending


def _reference(single: Mapping[str, Any], step: int) -> Mapping[str, Any]:
    """The single-task metrics at the same step (fair for pruning early), else its final ones."""
    for e in single.get("evals", []):
        if e["step"] == step:
            return e["metrics"]
    return single["metrics"]


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


def _pop(study: optuna.Study, baseline: str | None = None) -> optuna.Trial | None:
    """Take one WAITING trial (atomically: a trial another worker took is skipped), baselines
    first (every Delta-m needs the single-task one); with ``baseline``, only that baseline."""
    storage = study._storage
    waiting = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))
    waiting = sorted(waiting, key=lambda t: (t.user_attrs.get("baseline") is None, t.number))
    if baseline is not None:
        waiting = [t for t in waiting if t.user_attrs.get("baseline") == baseline]
    for t in waiting:
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, t._trial_id)
        except RuntimeError:  # finished meanwhile
            continue
    return None


def fusion_weights(net: Any) -> dict[str, Any]:
    """Per fusion point: the K x K mean mixing matrix and, per task, the per-channel weights on
    its own column and on the other columns (the cross-stitch paper's Fig. 5)."""
    out: dict[str, Any] = {}
    for point, unit in net.fusion_units().items():
        k = unit.num_tasks
        entry: dict[str, Any] = {"unit": unit.unit_name, "matrix": unit.mixing_weights().tolist(), "tasks": {}}
        for i, task in enumerate(net.task_names):
            same, other = _channel_weights(unit, i)
            entry["tasks"][task] = {"same": same, "other": other}
        entry["k"] = k
        out[point] = entry
    return out


def _channel_weights(unit: Any, i: int) -> tuple[list[float], list[float]]:
    k = unit.num_tasks
    if hasattr(unit, "weights"):  # NDDR: diagonal of each block of task i's projection
        w = unit.weights[i].detach()
        start, rows = 0, []
        for c in unit.channels:
            n = min(c, w.shape[0])
            rows.append(w[torch.arange(n), start + torch.arange(n)])
            start += c
    elif hasattr(unit, "per"):  # cross-stitch alpha (K, K, C)
        rows = [unit.alpha.detach()[i, j] for j in range(k)]
    else:
        m = unit.mixing_weights()
        rows = [m[i, j : j + 1] for j in range(k)]
    same = sorted(rows[i].flatten().tolist())
    other = sorted(torch.cat([rows[j].flatten() for j in range(k) if j != i]).tolist()) if k > 1 else []
    return same, other


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
    """Trains one queued trial: a baseline (by its user attribute) or a sampled plan."""

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

    def single(self, wait: bool) -> dict[str, Any] | None:
        """The single-task baseline's results. Waiting for them, this worker runs the baseline
        itself if it is queued (e.g. retried after its worker died): nobody else may be left."""
        while True:
            ref, pending = single_metrics(self.study)
            if ref is not None or not wait:
                return ref
            if not pending:
                raise FusionSearchError("the single-task baseline failed: Delta-m is undefined (see its trial)")
            reap_stale(self.study)
            queued = _pop(self.study, baseline="single")
            if queued is not None and self.execute is not None:
                self.execute(queued)
                continue
            time.sleep(self.wait_s)

    def single_columns(self) -> list[dict[str, torch.Tensor]]:
        """The trained single-task baseline's columns (waiting for it like Delta-m does)."""
        from optuna.artifacts import download_artifact

        from .experiment import column_weights_of
        from .stitch import load

        self.single(wait=True)
        done = [
            t
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if is_baseline(t) == "single"
        ]
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "single.pt"
            download_artifact(
                artifact_store=self.store, file_path=str(path), artifact_id=done[0].user_attrs["model_artifact"]
            )
            return column_weights_of(load(path))

    def __call__(self, trial: optuna.Trial) -> list[float]:
        if self.before_trial is not None:
            self.before_trial(trial)
        baseline = trial.user_attrs.get("baseline")
        cfg = self.recipe.train_config(seed=self.settings.seed)
        columns = None
        if baseline:
            plan, weights = self.exp.baseline_plan(baseline), None
        else:
            s = self.space.sample(trial, self.exp.points(self.space.points), len(self.recipe.tasks))
            plan, weights = s.plan, s.loss_weights
            if s.base_lr is not None:
                cfg.base_lr = s.base_lr
            if s.column_init == "single":
                columns = self.single_columns()
        trial.set_user_attr("plan", _jsonable(plan.to_dict()))
        if weights:
            trial.set_user_attr("loss_weights", weights)
        directions = self.exp.directions()
        prune = not self.settings.multi_objective and baseline is None

        def report(step: int, metrics: dict[str, dict[str, float]]) -> None:
            trial.set_user_attr("step", step)
            if self.settings.multi_objective or "delta_m" not in self.settings.objectives:
                return
            ref = {"metrics": metrics, "evals": []} if baseline == "single" else self.single(wait=False)
            if ref is None:
                return
            from .tasks import delta_m

            trial.report(delta_m(metrics, _reference(ref, step), directions, skip_zero=True), step)
            if prune and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}")

        result = self.exp.train(
            plan,
            cfg=cfg,
            loss_weights=weights,
            device=self.device,
            callback=report,
            progress=self.progress,
            column_weights=columns,
        )
        params = sum(p.numel() for p in result.net.parameters())
        trial.set_user_attr("metrics", result.metrics)
        trial.set_user_attr("evals", result.history["evals"])
        trial.set_user_attr("params", params)
        self._save_artifacts(trial, result.net)
        values: list[float] = []
        for o in self.settings.objectives:
            if o == "delta_m":
                ref = {"metrics": result.metrics} if baseline == "single" else self.single(wait=True)
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

    def _save_artifacts(self, trial: optuna.Trial, net: Any) -> None:
        from optuna.artifacts import upload_artifact

        from .stitch import save

        with tempfile.TemporaryDirectory() as d:
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
            if net.fusion_units():
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
        label = trial.user_attrs.get("baseline") or f"trial {trial.number}"
        log(f"{label}: started on {device}")
        with _Heartbeat(study._storage, trial._trial_id):
            try:
                values = objective(trial)
            except optuna.TrialPruned as e:
                study.tell(trial, state=TrialState.PRUNED)
                log(f"{label}: {e}")
                return
            except KeyboardInterrupt:
                trial.set_user_attr("fail_reason", "interrupted")
                study.tell(trial, state=TrialState.FAIL)
                raise
            except Exception as e:
                reason = failure_reason(e)
                trial.set_user_attr("fail_reason", reason)
                study.tell(trial, state=TrialState.FAIL)
                log(f"{label}: failed: {reason}")
                _free_memory()
                return
        study.tell(trial, values if len(values) > 1 else values[0])
        log(f"{label}: done, " + ", ".join(f"{o}={v:.4g}" for o, v in zip(settings.objectives, values)))
        _free_memory()

    objective.execute = execute
    start, ran = time.monotonic(), 0
    while max_trials is None or ran < max_trials:
        if timeout is not None and time.monotonic() - start > timeout:
            log("timeout reached")
            break
        reap_stale(study)
        trial = _pop(study)
        if trial is None:
            if any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)) and _stale_possible(study):
                time.sleep(1.0)  # a dead worker's trial may come back to the queue
                continue
            break
        ran += 1
        execute(trial)
    return ran


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
