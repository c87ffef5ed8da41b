"""One training for the placement x unit search: a supernet built from the warm start, trained
with fair paths, and plans scored on it after a brief fine-tune of their path (issue 22). The
study's job that runs it, and the slots it fills, are ``supernet_jobs``.

``build_supernet`` makes the ``nets.SuperNet`` of a recipe's search space from its warm start:
every unit of ``search.units`` at every candidate point, each unit with the arguments a
stand-alone trial of the recipe would give it by default. ``train_supernet`` trains it: each
step draws ``SuperNet.fair_paths`` (every unit at every point once), accumulates their gradients,
and takes one optimiser step, under the recipe's optimiser, multipliers and schedule; its cost is
counted in *path steps* (one forward and backward of one plan on one batch, what one step of a
stand-alone trial costs), and it resumes from its checkpoint. ``score_path`` rates a plan: a
copy of its path fine-tuned for a few steps (``search.supernet_score_steps``; how well that ranks
plans: README, The supernet mode, from ``benchmarks/supernet_rank.py``), BatchNorm
recalibrated on a few training batches, then Delta-m on the validation set.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
import random
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import optuna
import torch
from optuna.trial import TrialState

from fusionsearch.errors import CheckpointError
from fusionsearch.experiment.experiment import Experiment, WarmStart
from fusionsearch.experiment.space import SearchSpace
from fusionsearch.interrupts import check_interrupt
from fusionsearch.nets.plan import StitchPlan
from fusionsearch.nets.supernet import NONE_UNIT, SuperNet, recalibrate_batchnorm
from fusionsearch.paths import write_atomic
from fusionsearch.search.records import ScoredPlanRecord
from fusionsearch.search.seeding import JobSeeded
from fusionsearch.search.supernet_space import common_values, supernet_space
from fusionsearch.train import NonFiniteLossError, TrainConfig, evaluate, fit, train_loader
from fusionsearch.train.partial import loss_scales, shares_for
from fusionsearch.train.trainer import calibrate, lr_factor, make_optimizer, to_device

__all__ = [
    "SupernetRun",
    "build_supernet",
    "train_supernet",
    "score_path",
    "calibration_images",
    "path_seed",
    "default_steps",
    "supernet_unit_args",
    "scoring_study_name",
    "path_key",
    "score_plans",
    "places_unit",
]


@dataclass
class SupernetRun:
    """What a supernet's training did: optimiser steps, path steps (its cost in stand-alone
    steps), the mean loss over the paths of each step, and the seconds it took."""

    steps: int
    path_steps: int
    losses: list[float]
    seconds: float


def build_supernet(exp: Experiment, start: WarmStart, seed: int = 0, space: SearchSpace | None = None) -> SuperNet:
    """The supernet of ``exp``'s recipe: the warm start's columns and heads, and every candidate
    unit of the search space, restricted by its pins (``supernet_space``), at its candidate
    points after the shared prefix, drawn from ``seed`` (as a trial's new modules are)."""
    space = space or exp.recipe.space
    pinned = supernet_space(space, exp.points(space.points))
    k, optimizer = len(exp.recipe.tasks), exp.recipe.training.optimizer

    def one(unit: str) -> Any:
        args = {**pinned.unit_args(unit, k, optimizer), **space.unit_args.get(unit, {})}
        prefix = None if pinned.prefix == NONE_UNIT else pinned.prefix
        plan = StitchPlan(at=list(pinned.choices), unit=unit, unit_args=args, shared_prefix=prefix)
        return exp.build(plan, start=start, init_seed=seed)

    return SuperNet(one, pinned.units, list(pinned.choices), choices=pinned.choices)


def supernet_unit_args(space: SearchSpace, tasks: int, unit: str = "nddr", optimizer: str = "sgd") -> dict[str, Any]:
    """The arguments ``unit`` gets in the supernet: the middle of the search's ``init_alpha``
    range (alpha on the diagonal, the rest shared by the other tasks), or what every plan of the
    search has in common, pinned or a one-value range (``SupernetSpace.unit_args``); the
    stand-alone phase then draws the rest per plan."""
    return common_values(space).unit_args(unit, tasks, optimizer)


def path_seed(seed: int, step: int) -> int:
    """The draw of step ``step``'s paths: a function of the two, so a resumed training repeats."""
    return zlib.crc32(f"{seed}:{step}".encode())


def _save(path: Path, sn: SuperNet, opt: torch.optim.Optimizer, step: int, losses: list[float]) -> None:
    state = {"step": step, "state": sn.state_dict(), "opt": opt.state_dict(), "losses": losses}
    write_atomic(path, lambda f: torch.save(state, f))


def _resume(path: Path | None, sn: SuperNet, opt: torch.optim.Optimizer) -> tuple[int, list[float]]:
    if path is None or not path.exists():
        return 0, []
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        sn.load_state_dict(state["state"])
        opt.load_state_dict(state["opt"])
        return int(state["step"]), list(state["losses"])
    except Exception as e:
        raise CheckpointError(
            f"supernet checkpoint {str(path)!r} cannot be resumed ({type(e).__name__}: {e})"
        ) from None


def _calibrate_units(sn: SuperNet, exp: Experiment, cfg: TrainConfig, dev: torch.device) -> None:
    """Each unit's new BatchNorm starts as its input mix, as in a stand-alone warm-started trial
    (``train.calibrate``), calibrated with that unit at every point."""
    train_data = exp.datasets()[0]
    for u in sn.unit_names:
        if u != NONE_UNIT:
            calibrate(sn.every(u), train_data, cfg, dev)


def train_supernet(
    sn: SuperNet,
    exp: Experiment,
    cfg: TrainConfig,
    device: str | torch.device = "cpu",
    checkpoint: str | os.PathLike[str] | None = None,
    save_every: int = 10,
    penalties: str = "all",
    loss_weights: Mapping[str, float] | None = None,
) -> SupernetRun:
    """Train ``sn`` for ``cfg.steps`` optimiser steps, each on the fair paths of one batch
    (gradients averaged over the paths). ``cfg`` is the recipe's training config with the
    supernet's steps; ``checkpoint``: saved every ``save_every`` steps and at the end, and a
    training that finds it continues from it (the same paths and batches as without a stop).
    ``penalties``: what the units' extra losses (sluice's orthogonality penalty) train: ``all``
    the parameters they reach, as in a stand-alone plan, or ``units`` only the path's units, so
    that one unit's penalty does not move the columns every other path shares. ``loss_weights``:
    the tasks' weights, where the recipe's are not every plan's (``Experiment.tasks``)."""
    if penalties not in ("all", "units"):
        raise ValueError(f"penalties must be all or units, got {penalties!r}")
    dev = torch.device(device)
    sn.to(dev)
    tasks = exp.tasks(loss_weights)
    path = Path(checkpoint) if checkpoint is not None else None
    opt = make_optimizer(sn, cfg)  # type: ignore[arg-type]  # a SuperNet has StitchedNet's param_groups
    start, losses = _resume(path, sn, opt)
    if start == 0 and cfg.bn_init != "paper":
        _calibrate_units(sn, exp, cfg, dev)
    began = time.perf_counter()
    sn.train()
    shares = shares_for(cfg.batches, exp.datasets()[0], list(tasks))  # per-task batches' loss scales
    for step, batch in enumerate(train_loader(exp.datasets()[0], cfg, dev, start), start):
        check_interrupt()  # a safe point (``interrupts``)
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * lr_factor(step, cfg)
        paths = sn.fair_paths(random.Random(path_seed(cfg.seed, step)))
        image = batch["image"].to(dev)
        opt.zero_grad(set_to_none=True)
        total = _accumulate(sn, paths, tasks, image, batch, dev, penalties, cfg, shares)
        if not math.isfinite(total):
            raise NonFiniteLossError(f"supernet loss is {total} at step {step}")
        opt.step()
        losses.append(total)
        if path is not None and (step + 1) % save_every == 0:
            _save(path, sn, opt, step + 1, losses)
    if path is not None:
        _save(path, sn, opt, cfg.steps, losses)
    return SupernetRun(cfg.steps, cfg.steps * sn.paths_per_step, losses, time.perf_counter() - began)


def _accumulate(
    sn: SuperNet,
    paths: Sequence[Mapping[str, str]],
    tasks: Mapping[str, Any],
    image: torch.Tensor,
    batch: Mapping[str, Any],
    dev: torch.device,
    penalties: str,
    cfg: TrainConfig,
    shares: Mapping[str, float] | None,
) -> float:
    """One batch's gradients over ``paths`` (each weighed 1 / len(paths)), on the tasks the batch
    labels (each loss scaled as ``cfg.partial_loss`` says, ``shares`` under per-task batches);
    returns the mean loss."""
    present = loss_scales({t: tasks[t].labelled(batch[t]) for t in tasks}, cfg.partial_loss, cfg.batch_size, shares)
    total = 0.0
    for p in paths if present else []:
        net = sn.subnet(p)
        preds, extra = net(image, return_extra=True)
        loss = cast(
            torch.Tensor,
            sum(
                tasks[t].loss_weight * tasks[t].loss(preds[t].float(), to_device(batch[t], dev)) * k
                for t, k in present.items()
            ),
        )
        if penalties == "units" and extra.requires_grad:  # a penalty exists only where a unit made it
            (loss / len(paths)).backward(retain_graph=True)
            (extra / len(paths)).backward(inputs=[q for q in net.units.parameters() if q.requires_grad])
        else:
            (loss + extra).div(len(paths)).backward()
        total += float((loss + extra).detach()) / len(paths)
    return total


def calibration_images(exp: Experiment, cfg: TrainConfig, batches: int) -> list[torch.Tensor]:
    """The first ``batches`` training batches of ``cfg.seed``'s order (images only): every plan
    is recalibrated on the same images, so scores differ by the plan alone."""
    short = dataclasses.replace(cfg, steps=batches, num_workers=0)
    return [b["image"] for b in train_loader(exp.datasets()[0], short, torch.device("cpu"))]


def score_path(
    sn: SuperNet,
    path: Mapping[str, str],
    exp: Experiment,
    reference: Mapping[str, Mapping[str, float]],
    images: Sequence[torch.Tensor],
    val: Any,
    device: str | torch.device = "cpu",
    recalibrate: str = "all",
    finetune: TrainConfig | None = None,
    loss_weights: Mapping[str, float] | None = None,
) -> tuple[float, dict[str, dict[str, float]]]:
    """Delta-m (against ``reference``, e.g. the single-task baseline's metrics) and metrics of
    ``path`` on the supernet: BatchNorm recalibrated on ``images``
    (``recalibrate``: ``all`` of it, ``fusion`` the units' only, ``off``), then evaluated on
    ``val`` (a data set or ``train.eval_loader``).
    ``finetune``: first train a copy of the path for ``finetune.steps`` (the supernet is left as
    it was), the other known fix for weight-sharing rankings, at that many path steps per plan,
    under ``loss_weights`` (as ``train_supernet``)."""
    if recalibrate not in ("all", "fusion", "off"):
        raise ValueError(f"recalibrate must be all, fusion or off, got {recalibrate!r}")
    dev = torch.device(device)
    sn.to(dev)
    saved = {k: v.clone() for k, v in sn.state_dict().items() if not v.is_floating_point() or "running" in k}
    try:  # the supernet as it was afterwards, so no score depends on the one before it
        net = sn.subnet(path)
        if finetune is not None:
            net = copy.deepcopy(net)
            fit(net, exp.tasks(loss_weights), exp.datasets()[0], None, finetune, device=dev)
        if recalibrate != "off":
            recalibrate_batchnorm(net, (x.to(dev) for x in images), net.units if recalibrate == "fusion" else None)
        metrics = evaluate(net, exp.tasks(), val, device=dev)
    finally:
        sn.load_state_dict(saved, strict=False)
    return exp.delta_m(metrics, reference), metrics


def default_steps(exp: Experiment, sn: SuperNet) -> int:
    """One warm start's worth of path steps: ``train.steps`` divided among each step's paths."""
    return max(1, exp.recipe.training.steps // sn.paths_per_step)


def scoring_study_name(study: str) -> str:
    """The study that holds the plans scored on ``study``'s supernet, in the same storage."""
    return f"{study}:supernet"


def path_key(path: Mapping[str, str]) -> str:
    return ",".join(f"{p}={u}" for p, u in sorted(path.items()))


def _scored_before(study: optuna.Study, trial: Any) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _scoring_study(settings: Any) -> optuna.Study:
    from fusionsearch.search.storage import open_storage

    # each draw seeded by the plans scored before it (one process asks and tells in turn): a
    # scoring resumed after Ctrl-C draws what an uninterrupted one draws, not the first draws again
    sampler = JobSeeded(
        lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=20, multivariate=True),
        settings.seed,
        job=_scored_before,
    )
    study = optuna.create_study(
        study_name=scoring_study_name(settings.study),
        storage=open_storage(settings.storage, heartbeat=False),  # asked and told here, in one process
        load_if_exists=True,
        direction="maximize",
        sampler=sampler,
    )
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)  # scoring stopped midway: drawn again below
    return study


def score_plans(
    sn: SuperNet,
    exp: Experiment,
    settings: Any,
    n: int,
    reference: Mapping[str, Mapping[str, float]],
    cfg: TrainConfig,
    device: str | torch.device = "cpu",
    loss_weights: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Score ``n`` distinct plans (placement x unit: a candidate of ``sn.choices`` at each point;
    every plan ``sn`` holds if it holds fewer), drawn by TPE in the study's scoring study, each
    marked ``supernet_scored``, each after ``search.supernet_score_steps`` steps of training a
    copy of its path under ``loss_weights`` (``score_path``); a resumed call scores only those
    still missing. A draw of a plan already scored is neither scored nor counted again: its trial
    fails (TPE learns nothing twice) and a plan not yet scored takes the next trial (``_unscored``),
    so even a space of a few plans ends. Returns every scored plan, best first, one entry per
    distinct path: ``{path, score, trial}``."""
    study = _scoring_study(settings)
    images = calibration_images(exp, cfg, cfg.bn_calibration_batches)
    val = exp.datasets()[1]
    steps = exp.recipe.space.supernet_score_steps
    tune = dataclasses.replace(cfg, steps=steps, eval_steps=[], progress=False) if steps else None
    prefix = sn.base.plan.shared_prefix
    done: dict[str, float] = {}
    fused = False  # some scored plan places a unit (what the slots train): scoring goes on until one does
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        scored = ScoredPlanRecord(t).path or {}
        done.setdefault(path_key(scored), cast(float, t.value))
        fused = fused or places_unit(scored)
    while len(done) < min(n, sn.plans) or (not fused and len(done) < sn.plans):
        trial = study.ask()
        if prefix is not None:  # stored with each plan: the trunk every scored plan has
            trial.suggest_categorical("shared_prefix", [prefix])
        path = {p: trial.suggest_categorical(f"unit@{p}", sn.choices[p]) for p in sn.point_names}
        key = path_key(path)
        record = ScoredPlanRecord(trial)
        record.path = path
        if key in done:
            record.repeats = True
            again = _unscored(sn, done, random.Random(path_seed(settings.seed, trial.number)))
            shared = {"shared_prefix": prefix} if prefix is not None else {}
            study.enqueue_trial({**shared, **{f"unit@{p}": u for p, u in again.items()}})
            study.tell(trial, state=TrialState.FAIL)
            continue
        done[key], metrics = score_path(
            sn, path, exp, reference, images, val, device, finetune=tune, loss_weights=loss_weights
        )
        fused = fused or places_unit(path)
        record.metrics = metrics
        record.supernet_scored = True
        study.tell(trial, done[key])
    best: dict[str, dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        path = ScoredPlanRecord(t).path or {}
        if path_key(path) not in best:
            best[path_key(path)] = {"path": path, "score": t.value, "trial": t.number}
    return sorted(best.values(), key=lambda r: -r["score"])


def places_unit(path: Mapping[str, str]) -> bool:
    """Whether ``path`` puts a fusion unit somewhere (what a slot trains), not none everywhere."""
    return any(u != NONE_UNIT for u in path.values())


def _unscored(sn: SuperNet, done: Mapping[str, float], rng: random.Random) -> dict[str, str]:
    """A plan of ``sn`` not in ``done``: a few random draws, then the first in order (at most
    ``len(done)`` plans come before it), so a space nearly all scored takes no more time."""
    for _ in range(64):
        path = {p: rng.choice(sn.choices[p]) for p in sn.point_names}
        if path_key(path) not in done:
            return path
    for units in itertools.product(*(sn.choices[p] for p in sn.point_names)):
        path = dict(zip(sn.point_names, units))
        if path_key(path) not in done:
            return path
    raise ValueError(f"every one of the supernet's {sn.plans} plans is scored")
