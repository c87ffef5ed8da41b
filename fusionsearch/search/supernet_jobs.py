"""The supernet mode as jobs of a study (``search.mode: supernet``): the supernet job trains and
scores the supernet once (``jobs.SupernetTraining``), and each slot then trains one of its best
plans stand-alone (``jobs.Slot``). What they read of the study comes in their ``JobContext``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import optuna

from fusionsearch.experiment.space import Sampled, SearchSpace
from fusionsearch.nets.supernet import NONE_UNIT
from fusionsearch.search.context import JobContext, Reference
from fusionsearch.search.records import TrialRecord
from fusionsearch.search.storage import artifact_dir
from fusionsearch.search.supernet_space import common_values
from fusionsearch.search.supernet_training import (
    build_supernet,
    default_steps,
    places_unit,
    score_plans,
    train_supernet,
)

__all__ = ["train_and_score", "supernet_slot"]


def train_and_score(ctx: JobContext, trial: optuna.Trial) -> list[float]:
    """The study's supernet job: build it from the warm start, train it (resuming from its
    checkpoint in the artefact folder), score ``search.supernet_plans`` plans on it, and record
    the ranking in the trial, whose slots train the best plans stand-alone. Its value is 0: it is
    no competitor (``Job.ranked``)."""
    exp, space, settings = ctx.exp, ctx.space, ctx.settings
    warm = ctx.warm_start()
    sn = build_supernet(exp, warm, seed=settings.seed, space=space)
    common = common_values(space)  # what every plan trains with (pinned): the supernet too
    weights = common.loss_weights or None
    cfg = exp.recipe.train_config(seed=settings.seed)
    cfg.steps = space.supernet_steps or default_steps(exp, sn)
    cfg.base_lr = common.base_lr if common.base_lr is not None else cfg.base_lr
    cfg.base_lr *= space.finetune_lr_mult  # trained columns, as in a warm-started trial
    cfg.progress = ctx.progress
    folder = artifact_dir(settings.storage, settings.artifacts) / "supernet"
    folder.mkdir(parents=True, exist_ok=True)
    ck = folder / f"{settings.study}.pt"
    run = train_supernet(sn, exp, cfg, ctx.device, checkpoint=ck, loss_weights=weights)
    single = ctx.deps.reference(Reference(), wait=True)
    assert single is not None  # waited for
    if space.supernet_plans > sn.plans:
        ctx.log(f"supernet: supernet_plans is {space.supernet_plans}, the space has {sn.plans}: all are scored")
    ranked = score_plans(sn, exp, settings, space.supernet_plans, single["metrics"], cfg, ctx.device, weights)
    top = [r for r in ranked if places_unit(r["path"])][: max(1, settings.trials)]
    record = TrialRecord(trial)
    record.supernet_top = top
    record.steps = run.steps
    scoring = len(ranked) * space.supernet_score_steps  # each scored plan's copy trains that long
    record.path_steps = run.path_steps + scoring
    record.supernet_training_path_steps = run.path_steps
    record.supernet_scored_plans = len(ranked)
    record.supernet_seconds = run.seconds
    ctx.log(f"supernet: {run.path_steps} path steps, {len(ranked)} plans scored, best {top[0]['score']:+.2f}")
    return [0.0 for _ in settings.objectives]


def supernet_slot(
    space: SearchSpace,
    slot: int,
    top: list[dict[str, Any]],
    trial: optuna.Trial,
    sampled: Callable[[SearchSpace], Sampled],
) -> Sampled:
    """Slot ``slot`` of a supernet study: the supernet's ``slot``-th best plan of ``top`` (placement
    x unit after the pinned shared prefix, or none, and no shortcut: what the supernet scored),
    its other choices drawn by the study's sampler under the study's pins; ``sampled`` draws a
    trial from a space (``SearchSpace.sample``)."""
    pick = top[slot % len(top)]
    fixed = {**space.fixed, **{f"unit@{p}": u for p, u in pick["path"].items()}, "shortcut": False}
    if space.shared_prefix:
        fixed["shared_prefix"] = space.fixed.get("shared_prefix", NONE_UNIT)
    record = TrialRecord(trial)
    record.supernet_rank = slot % len(top) + 1
    record.supernet_score = pick["score"]
    return sampled(dataclasses.replace(space, fixed=fixed))
