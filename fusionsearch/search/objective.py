"""What one trial does: build its plan, train it, report to the pruner, and return its objectives.

``Objective`` trains a queued trial of any kind (the warm start, a baseline, a sampled plan, a
confirmation run); each objective is one entry of ``MEASURES`` rather than a branch.

A trial's dependencies (the warm start, the single-task reference) that an accident took away, at
any point, come back one way: the dependency is queued again and this worker trains it itself if
nobody else does (``Objective.wait_for``). That covers a dependency interrupted or failed by an
accident, and a warm start whose saved nets are missing, truncated or damaged (``warm_start``).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from fusionsearch.errors import DataError, DependencyError, LostDependencyError
from fusionsearch.experiment.experiment import WARMSTART, Experiment, WarmStart
from fusionsearch.experiment.recipe import Recipe
from fusionsearch.experiment.space import Sampled, SearchSpace
from fusionsearch.interrupts import check_interrupt
from fusionsearch.nets.fusion import fusion_weights
from fusionsearch.nets.plan import StitchPlan
from fusionsearch.search.categories import record_per_category
from fusionsearch.search.optuna_internals import storage_of
from fusionsearch.search.queueing import (
    find,
    is_baseline,
    is_reference,
    pop,
    reap_stale,
    requeue_failed,
    single_metrics,
)
from fusionsearch.search.recovery import MAX_RETRY, interrupted
from fusionsearch.search.requeue import failed_for_good
from fusionsearch.search.storage import artifact_dir, artifact_store, queue_lock
from fusionsearch.search.study import StudySettings, rungs
from fusionsearch.search.supernet import is_supernet_job, supernet_job, supernet_slot
from fusionsearch.train.devices import latency_ms
from fusionsearch.train.trainer import TrainConfig

__all__ = [
    "Objective",
    "failure_reason",
]


def _reference(single: Mapping[str, Any], step: int) -> Mapping[str, Any]:
    """The single-task metrics at the same step (fair for pruning early), else its final ones."""
    for e in single.get("evals", []):
        if e["step"] == step:
            return e["metrics"]
    return single["metrics"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        run: Callable[[optuna.Trial], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.study, self.recipe, self.settings = study, recipe, settings
        self.exp = Experiment(recipe, settings.seed)
        self.space = SearchSpace.from_dict(recipe.search)
        self.device = device
        self.progress = progress
        self.before_trial = before_trial
        self.wait_s = wait_s
        self.store = artifact_store(settings.storage, settings.artifacts)
        # how a trial this one needs is run when it is queued (the worker's ``TrialRunner.run``);
        # None: it is awaited from other workers only
        self.execute = run
        self.log: Callable[[str], None] = log or (lambda line: None)
        self.rungs = rungs(recipe, settings)
        self._warm: WarmStart | None = None
        self._retrained = 0  # warm starts this worker queued again because their nets were unreadable

    def wait_for(self, match: Callable[[Any], bool], what: str, newest: bool = False) -> Any:
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
                raise DependencyError(self._dependency_failed(match, what))
            reap_stale(self.study)
            queued = pop(self.study, match) if self.execute is not None else None
            if queued is not None:
                self.execute(queued)  # type: ignore[misc]  # queued is None when execute is
                continue
            check_interrupt()  # a safe point while it waits
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
        if "slot" in attrs and self.space.mode == "supernet":
            needs.append((is_supernet_job, "the supernet"))
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
        self.wait_for(lambda t: is_reference(t, confirm, seed), "the single-task reference: Delta-m is undefined")
        return single_metrics(self.study, confirm, seed)[0]

    def warm_start(self) -> WarmStart:
        """The trained single-task nets every warm-started trial begins from (downloaded once per
        worker from the artefact store, so workers on other machines get them too).

        They come from the newest complete warm start whose file reads back whole. A file that is
        missing, truncated or damaged is an accident, not the waiting plan's fault, and no trial
        trains on it: the warm start is queued again and trained first (``_replace_warm_start``),
        with the study seed, so it is the same nets again."""
        lost: dict[int, str] = {}  # warm-start trial -> why its nets cannot be read
        while self._warm is None:
            match = lambda t: is_baseline(t) == WARMSTART and t.number not in lost
            done = self.wait_for(match, "the warm start (single-task nets)", newest=True)
            try:
                self._warm = self._read_warm_start(done)
            except Exception as e:  # any way the file fails to come back whole: retrained, a bounded number of times
                if interrupted(e):
                    raise
                lost[done.number] = failure_reason(e)
                self._replace_warm_start(done, lost)
        return self._warm

    def _read_warm_start(self, done: Any) -> WarmStart:
        """The nets of warm-start trial ``done``, checked against the SHA-256 recorded when they
        were saved (a file damaged in place loads without an error, and would train)."""
        from optuna.artifacts import download_artifact

        from fusionsearch.nets.io import load

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "warmstart.pt"
            download_artifact(
                artifact_store=self.store, file_path=str(path), artifact_id=done.user_attrs["model_artifact"]
            )
            want = done.user_attrs.get("model_sha256")  # None in a study saved before it was recorded
            if want is not None and _sha256(path) != want:
                raise DataError("damaged: its SHA-256 differs from the one recorded when it was saved")
            return WarmStart.of(load(path, trust=True))  # written by a worker of this study

    def _replace_warm_start(self, done: Any, lost: Mapping[int, str]) -> None:
        """Queue the warm start again after ``done``'s nets could not be read, unless another warm
        start is complete and untried, queued, running, or coming back from an accident (another
        worker got here first). A store that loses what it was just given (a full or vanished
        disk) would retrain for ever: after ``MAX_RETRY`` retrains this worker stops with one line,
        and the waiting trial is queued again (``run_worker``), so nothing is lost."""
        where = artifact_dir(self.settings.storage, self.settings.artifacts)
        with queue_lock(storage_of(self.study)):
            trials = self.study.get_trials(deepcopy=False)
            warm = [t for t in trials if is_baseline(t) == WARMSTART]
            if not all(t.number in lost or failed_for_good(t, trials) for t in warm):
                return
            if self._retrained >= MAX_RETRY:
                raise LostDependencyError(
                    f"the warm start's nets cannot be read from the artefact folder {where} (trial {done.number}:"
                    f" {lost[done.number]}), also after training it again {self._retrained} times: check that"
                    " folder (free space, the mount, --artifacts), then run the same command again; the waiting"
                    " trial is queued again"
                )
            attrs = {"baseline": WARMSTART, "replaces": done.number}
            self.study.enqueue_trial({"baseline": WARMSTART}, user_attrs=attrs)
            self._retrained += 1
        why = lost[done.number]
        self.log(f"warmstart (trial {done.number}) cannot be read from {where} ({why}): training it again")

    def _what(self, trial: optuna.Trial) -> Sampled:
        """What a trial of any kind trains: plan, loss weights, base lr, column start, weighting.
        Baselines train as the recipe says (the papers' fixed weights unless ``train.weighting``)."""
        attrs = trial.user_attrs
        baseline, confirm = attrs.get("baseline"), attrs.get("confirm")
        if baseline == WARMSTART:
            return Sampled(self.exp.baseline_plan("single"), {}, None, "scratch")
        if baseline is not None:
            return Sampled(self.exp.baseline_plan(baseline), {}, None, self.space.baseline_init)
        if confirm is not None:
            if "source" not in attrs:
                return Sampled(self.exp.baseline_plan(confirm), {}, None, self.space.baseline_init)
            src = self.study.get_trials(deepcopy=False)[attrs["source"]].user_attrs
            return Sampled(
                StitchPlan.from_dict(src["plan"]),
                src.get("loss_weights") or {},
                src.get("base_lr"),
                src.get("column_init", self.space.baseline_init),
                src.get("weighting"),
            )
        optimizer = self.recipe.train_config().optimizer
        draw = lambda space: space.sample(trial, self.exp.points(space.points), len(self.recipe.tasks), optimizer)
        return supernet_slot(self, trial, draw) if self.space.mode == "supernet" else draw(self.space)

    def __call__(self, trial: optuna.Trial) -> list[float]:
        self.check_dependencies(trial)
        if self.before_trial is not None:
            self.before_trial(trial)
        if is_supernet_job(trial):
            return supernet_job(self, trial)
        seed = int(trial.user_attrs.get("seed", self.settings.seed))
        cfg = self.recipe.train_config(seed=seed)
        what = self._what(trial)
        start = self._configure(trial, cfg, what)
        self._record_plan(trial, what)
        result = self.exp.train(
            what.plan,
            cfg=cfg,
            loss_weights=what.loss_weights or None,
            device=self.device,
            callback=self._reporter(trial, cfg),
            progress=self.progress,
            start=start,
        )
        params = self._record_result(trial, result)
        # measured first: the latency on the device it trained on, and the kept-net rule reads the value
        values = [MEASURES[o](self, trial, result, params) for o in self.settings.objectives]
        self._save_artifacts(trial, result.net, result.history.get("weighting"), values)
        del result
        return values

    def _configure(self, trial: optuna.Trial, cfg: TrainConfig, what: Sampled) -> WarmStart | None:
        """Fit ``cfg`` to what the trial trains (its weighting, base lr, warm start's shorter and
        slower budget, evaluation steps); returns the nets it starts from, None from scratch."""
        baseline, confirm = trial.user_attrs.get("baseline"), trial.user_attrs.get("confirm")
        if what.weighting is not None:
            cfg.weighting = what.weighting
            trial.set_user_attr("weighting", what.weighting)
        if what.base_lr is not None:
            cfg.base_lr = what.base_lr
        start = None
        if what.column_init == "single":
            start = self.warm_start()
            cfg.steps = self.space.finetune(cfg.steps)
            cfg.base_lr *= self.space.finetune_lr_mult
        # only the last evaluation is read for the warm start and the confirmation; the search
        # evaluates at the pruner's rungs (or where the recipe's train.eval_steps says)
        if baseline == WARMSTART or confirm is not None:
            cfg.eval_steps = []
        elif self.rungs is not None:
            cfg.eval_steps = self.rungs
        return start

    def _record_plan(self, trial: optuna.Trial, what: Sampled) -> None:
        """What the trial trains, in its user attributes before it trains (the report reads them)."""
        trial.set_user_attr("plan", _jsonable(what.plan.to_dict()))
        trial.set_user_attr("column_init", what.column_init)
        if what.loss_weights:
            trial.set_user_attr("loss_weights", what.loss_weights)
        if what.base_lr is not None:
            trial.set_user_attr("base_lr", what.base_lr)

    def _reporter(self, trial: optuna.Trial, cfg: TrainConfig) -> Callable[[int, dict[str, dict[str, float]]], None]:
        """The training loop's callback at each evaluation: records the step, and for a sampled
        plan of a single-objective search reports Delta-m to the pruner, which may stop it."""
        baseline, confirm = trial.user_attrs.get("baseline"), trial.user_attrs.get("confirm")
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

        return report

    def _record_result(self, trial: optuna.Trial, result: Any) -> int:
        """The trained trial's metrics, evaluations, size and per-category results in its user
        attributes; returns its parameter count."""
        params = sum(p.numel() for p in result.net.parameters())
        trial.set_user_attr("metrics", result.metrics)
        trial.set_user_attr("evals", result.history["evals"])
        trial.set_user_attr("params", params)
        trial.set_user_attr("steps", result.step)
        record_per_category(trial, self.study, result, self.exp)  # the data-starved analysis' inputs
        return params

    def _delta_m(self, trial: optuna.Trial, result: Any, params: int) -> float:
        attrs = trial.user_attrs
        baseline, confirm = attrs.get("baseline"), attrs.get("confirm")
        if baseline == WARMSTART:  # the others' start, not a competitor: no Delta-m, ranked nowhere
            return 0.0
        own = (baseline == "single") or (confirm == "single")
        seed = int(attrs.get("seed", self.settings.seed))
        ref = {"metrics": result.metrics} if own else self.single(True, confirm is not None, seed)
        assert ref is not None
        dm = self.exp.delta_m(result.metrics, ref["metrics"])
        trial.set_user_attr("delta_m", dm)
        return dm

    def _params(self, trial: optuna.Trial, result: Any, params: int) -> float:
        return float(params)

    def _latency(self, trial: optuna.Trial, result: Any, params: int) -> float:
        ms = latency_ms(result.net, self.exp.input_size, next(result.net.parameters()).device)
        trial.set_user_attr("latency_ms", ms)
        return ms

    def _keeps_net(self, trial: optuna.Trial, values: list[float] | None = None) -> bool:
        """Nets kept (~90 MB each for two resnet18 columns): the warm start (every worker's start),
        the first confirmation seed of each baseline and confirmed plan (what ``best`` exports);
        with no confirmation, the search's baselines and each searched trial that is the best run
        so far (so the best single run, what ``best`` then exports, always has its net);
        ``keep_nets: all`` keeps all."""
        attrs = trial.user_attrs
        if self.settings.keep_nets == "all" or attrs.get("baseline") == WARMSTART or attrs.get("keep_net"):
            return True
        if self.settings.confirm_seeds != 0:
            return False
        return "baseline" in attrs or ("slot" in attrs and values is not None and self._best_so_far(trial, values[0]))

    def _best_so_far(self, trial: optuna.Trial, value: float) -> bool:
        """``value`` (the first objective) is at least as good as every complete searched trial's."""
        sign = 1 if trial.study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
        done = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        others = [sign * t.values[0] for t in done if "slot" in t.user_attrs and "confirm" not in t.user_attrs]
        return not others or sign * value >= max(others)

    def _save_artifacts(
        self, trial: optuna.Trial, net: Any, weighting: Any = None, values: list[float] | None = None
    ) -> None:
        from optuna.artifacts import upload_artifact

        from fusionsearch.nets.io import save

        with tempfile.TemporaryDirectory() as d:
            if self._keeps_net(trial, values):
                model = Path(d) / f"trial-{trial.number}.pt"
                save(net.cpu(), model, weighting=weighting)
                trial.set_user_attr("model_sha256", _sha256(model))  # what a reader checks the file against
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


# objective name (``study.OBJECTIVES``) -> how a trained trial measures it
MEASURES: dict[str, Callable[[Objective, optuna.Trial, Any, int], float]] = {
    "delta_m": Objective._delta_m,
    "params": Objective._params,
    "latency": Objective._latency,
}


def _jsonable(d: Any) -> Any:
    return json.loads(json.dumps(d, default=list))
