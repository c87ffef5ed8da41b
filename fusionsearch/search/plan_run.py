"""How a job that trains a plan runs (``jobs.PlanJob.run``): fit the training config to what it
trains, record the plan, train it from its start while the pruner watches, then measure each
objective and keep the nets the job keeps.

The job decides (``Terms``): its seed, whether it evaluates at the pruner's rungs, whether the
pruner may stop it, what its Delta-m is measured against and which nets it keeps; this module
only carries those decisions out, the same way for every kind.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from fusionsearch.experiment.experiment import WarmStart
from fusionsearch.experiment.space import Sampled
from fusionsearch.nets.plan import StitchPlan
from fusionsearch.search.artifacts import save_nets
from fusionsearch.search.categories import record_per_category
from fusionsearch.search.context import JobContext, Reference
from fusionsearch.search.measures import MEASURES
from fusionsearch.search.records import TrialRecord
from fusionsearch.train.trainer import TrainConfig

__all__ = ["Terms", "train_plan", "recorded_plan"]


@dataclass(frozen=True)
class Terms:
    """How a job trains its plan: ``seed``; ``at_rungs``, evaluated where the pruner decides (else
    at the end only); ``prunable``, the pruner may stop it; ``reference``, what its Delta-m is
    measured against (None: not measured); ``keeps_net``, given its objective values, whether its
    net is kept (the study's ``keep_nets: all`` keeps every one anyway)."""

    seed: int
    at_rungs: bool
    prunable: bool
    reference: Reference | None
    keeps_net: Callable[[list[float]], bool]


def train_plan(ctx: JobContext, trial: optuna.Trial, what: Sampled, terms: Terms) -> list[float]:
    """Train ``what`` as ``trial`` under ``terms``; returns the study's objective values."""
    cfg = ctx.recipe.train_config(seed=terms.seed)
    start = _configure(ctx, trial, cfg, what, terms.at_rungs)
    _record_plan(trial, what)
    result = ctx.exp.train(
        what.plan,
        cfg=cfg,
        loss_weights=what.loss_weights or None,
        device=ctx.device,
        callback=_reporter(ctx, trial, cfg, terms),
        progress=ctx.progress,
        start=start,
    )
    params = _record_result(ctx, trial, result)
    # measured first: the latency on the device it trained on, and the kept-net rule reads the value
    values = [MEASURES[o](ctx, trial, result, params, terms.reference) for o in ctx.settings.objectives]
    keep = ctx.settings.keep_nets == "all" or terms.keeps_net(values)
    save_nets(ctx.store, trial, result.net, result.history.get("weighting"), keep)
    del result
    return values


def recorded_plan(ctx: JobContext, number: int) -> Sampled:
    """What trial ``number`` trained, as its record says (a searched plan confirmed over seeds)."""
    src = TrialRecord(ctx.study.get_trials(deepcopy=False)[number])
    return Sampled(
        StitchPlan.from_dict(src.plan or {}),
        src.loss_weights or {},
        src.base_lr,
        src.column_init if src.column_init is not None else ctx.space.baseline_init,
        src.weighting,
        partial_loss=src.partial_loss,
    )


def _configure(
    ctx: JobContext, trial: optuna.Trial, cfg: TrainConfig, what: Sampled, at_rungs: bool
) -> WarmStart | None:
    """Fit ``cfg`` to what the trial trains (its weighting, base lr, warm start's shorter and
    slower budget, evaluation steps); returns the nets it starts from, None from scratch."""
    if what.weighting is not None:
        cfg.weighting = what.weighting
        TrialRecord(trial).weighting = what.weighting
    if what.partial_loss is not None:
        cfg.partial_loss = what.partial_loss  # type: ignore[assignment]  # checked by SearchSpace
        TrialRecord(trial).partial_loss = what.partial_loss
    if what.base_lr is not None:
        cfg.base_lr = what.base_lr
    start = None
    if what.column_init == "single":
        start = ctx.warm_start()
        cfg.steps = ctx.space.finetune(cfg.steps)
        cfg.base_lr *= ctx.space.finetune_lr_mult
    # only the last evaluation is read for the warm start and the confirmation; the search
    # evaluates at the pruner's rungs (or where the recipe's train.eval_steps says)
    if not at_rungs:
        cfg.eval_steps = []
    elif ctx.rungs is not None:
        cfg.eval_steps = ctx.rungs
    return start


def _record_plan(trial: optuna.Trial, what: Sampled) -> None:
    """What the trial trains, in its record before it trains (the report reads it)."""
    record = TrialRecord(trial)
    record.plan = _jsonable(what.plan.to_dict())
    record.column_init = what.column_init
    record.record_pinned(what.pinned)  # the search's pins it took instead of a draw
    if what.loss_weights:
        record.loss_weights = what.loss_weights
    if what.base_lr is not None:
        record.base_lr = what.base_lr


def _at_step(single: Mapping[str, Any], step: int) -> Mapping[str, Any]:
    """The single-task metrics at the same step (fair for pruning early), else its final ones."""
    for e in single.get("evals", []):
        if e["step"] == step:
            return e["metrics"]
    return single["metrics"]


def _reporter(
    ctx: JobContext, trial: optuna.Trial, cfg: TrainConfig, terms: Terms
) -> Callable[[int, dict[str, dict[str, float]]], None]:
    """The training loop's callback at each evaluation: records the step, and for a job of the
    search (not a confirmation) of a single-objective study reports Delta-m to the pruner, which
    may stop a prunable one."""
    ref, multi = terms.reference, ctx.settings.multi_objective
    record = TrialRecord(trial)

    def report(step: int, metrics: dict[str, dict[str, float]]) -> None:
        record.step = step
        if multi or ref is None or ref.confirm or "delta_m" not in ctx.settings.objectives:
            return
        single = {"metrics": metrics, "evals": []} if ref.own else ctx.deps.reference(ref, wait=False)
        if single is None:
            return
        trial.report(ctx.exp.delta_m(metrics, _at_step(single, step)), step)
        # only sampled plans compete at the rungs: a warm-started plan starts below the
        # single-task nets it came from, so with the baselines as the bar at 4 steps every
        # plan was stopped and the confirmation had no searched plan to check
        if terms.prunable and step < cfg.steps and trial.should_prune():  # a finished plan is never "pruned"
            raise optuna.TrialPruned(f"pruned at step {step}")

    return report


def _record_result(ctx: JobContext, trial: optuna.Trial, result: Any) -> int:
    """The trained trial's metrics, evaluations, size and per-category results in its record;
    returns its parameter count."""
    params = sum(p.numel() for p in result.net.parameters())
    record = TrialRecord(trial)
    record.metrics = result.metrics
    record.evals = result.history["evals"]
    record.params = params
    record.steps = result.step
    record_per_category(trial, ctx.study, result, ctx.exp)  # the data-starved analysis' inputs
    return params


def _jsonable(d: Any) -> Any:
    return json.loads(json.dumps(d, default=list))
