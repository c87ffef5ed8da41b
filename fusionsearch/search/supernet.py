"""One training for the placement x unit search: a supernet built from the warm start, trained
with fair paths, and plans scored on it after a brief fine-tune of their path (issue 22).

``build_supernet`` makes the ``nets.SuperNet`` of a recipe's search space from its warm start:
every unit of ``search.units`` at every candidate point, each unit with the arguments a
stand-alone trial of the recipe would give it by default. ``train_supernet`` trains it: each
step draws ``SuperNet.fair_paths`` (every unit at every point once), accumulates their gradients,
and takes one optimiser step, under the recipe's optimiser, multipliers and schedule; its cost is
counted in *path steps* (one forward and backward of one plan on one batch, what one step of a
stand-alone trial costs), and it resumes from its checkpoint. ``score_path`` rates a plan: a
copy of its path fine-tuned for a few steps (``search.supernet_score_steps``; Kendall tau against
stand-alone training +0.75 with 10, +0.07 with none: ``benchmarks/supernet_rank.py``), BatchNorm
recalibrated on a few training batches, then Delta-m on the validation set.
"""

from __future__ import annotations

import copy
import dataclasses
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
from fusionsearch.interrupts import check_interrupt
from fusionsearch.nets.plan import StitchPlan
from fusionsearch.nets.supernet import NONE_UNIT, SuperNet, recalibrate_batchnorm
from fusionsearch.search.experiment import Experiment, WarmStart
from fusionsearch.search.seeding import JobSeeded
from fusionsearch.search.space import SearchSpace
from fusionsearch.train import (
    NonFiniteLossError,
    TrainConfig,
    calibrate,
    evaluate,
    fit,
    lr_factor,
    make_optimizer,
    to_device,
    train_loader,
)

__all__ = [
    "SupernetRun",
    "build_supernet",
    "train_supernet",
    "score_path",
    "calibration_images",
    "path_seed",
    "default_steps",
    "supernet_unit_args",
    "SUPERNET",
    "is_supernet_job",
    "scoring_study_name",
    "path_key",
    "score_plans",
    "supernet_job",
    "supernet_slot",
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
    """The supernet of ``exp``'s recipe: the warm start's columns and heads, and every unit of the
    search space at every candidate point, drawn from ``seed`` (as a trial's new modules are)."""
    space = space or SearchSpace.from_dict(exp.recipe.search)
    points = exp.points(space.points)

    def one(unit: str) -> Any:
        args = {**supernet_unit_args(space, len(exp.recipe.tasks)), **space.unit_args.get(unit, {})}
        return exp.build(StitchPlan(at=list(points), unit=unit, unit_args=args), start=start, init_seed=seed)

    return SuperNet(one, space.units, points)


def supernet_unit_args(space: SearchSpace, tasks: int) -> dict[str, Any]:
    """The arguments every unit of the supernet gets: the middle of the search's ``init_alpha``
    range (alpha on the diagonal, the rest shared by the other tasks) and each unit's default
    learning-rate multiplier; the stand-alone phase then searches them per plan."""
    if space.init:
        return {}
    alpha = (space.init_alpha[0] + space.init_alpha[1]) / 2
    return {"init": (alpha, (1 - alpha) / max(1, tasks - 1))}


def path_seed(seed: int, step: int) -> int:
    """The draw of step ``step``'s paths: a function of the two, so a resumed training repeats."""
    return zlib.crc32(f"{seed}:{step}".encode())


def _save(path: Path, sn: SuperNet, opt: torch.optim.Optimizer, step: int, losses: list[float]) -> None:
    tmp = path.with_name(path.name + ".part")
    torch.save({"step": step, "state": sn.state_dict(), "opt": opt.state_dict(), "losses": losses}, tmp)
    os.replace(tmp, path)


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
            calibrate(sn.subnet(dict.fromkeys(sn.point_names, u)), train_data, cfg, dev)


def train_supernet(
    sn: SuperNet,
    exp: Experiment,
    cfg: TrainConfig,
    device: str | torch.device = "cpu",
    checkpoint: str | os.PathLike[str] | None = None,
    save_every: int = 10,
    penalties: str = "all",
) -> SupernetRun:
    """Train ``sn`` for ``cfg.steps`` optimiser steps, each on the fair paths of one batch
    (gradients averaged over the paths). ``cfg`` is the recipe's training config with the
    supernet's steps; ``checkpoint``: saved every ``save_every`` steps and at the end, and a
    training that finds it continues from it (the same paths and batches as without a stop).
    ``penalties``: what the units' extra losses (sluice's orthogonality penalty) train: ``all``
    the parameters they reach, as in a stand-alone plan, or ``units`` only the path's units, so
    that one unit's penalty does not move the columns every other path shares."""
    if penalties not in ("all", "units"):
        raise ValueError(f"penalties must be all or units, got {penalties!r}")
    dev = torch.device(device)
    sn.to(dev)
    tasks = exp.tasks()
    path = Path(checkpoint) if checkpoint is not None else None
    opt = make_optimizer(sn, cfg)  # type: ignore[arg-type]  # a SuperNet has StitchedNet's param_groups
    start, losses = _resume(path, sn, opt)
    if start == 0 and cfg.bn_init != "paper":
        _calibrate_units(sn, exp, cfg, dev)
    began = time.perf_counter()
    sn.train()
    for step, batch in enumerate(train_loader(exp.datasets()[0], cfg, dev, start), start):
        check_interrupt()  # a safe point (``interrupts``)
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * lr_factor(step, cfg)
        paths = sn.fair_paths(random.Random(path_seed(cfg.seed, step)))
        image = batch["image"].to(dev)
        opt.zero_grad(set_to_none=True)
        present = [t for t in tasks if bool(tasks[t].labelled(batch[t]).any())]
        total = 0.0
        for p in paths if present else []:
            net = sn.subnet(p)
            preds, extra = net(image, return_extra=True)
            loss = cast(
                torch.Tensor,
                sum(tasks[t].loss_weight * tasks[t].loss(preds[t].float(), to_device(batch[t], dev)) for t in present),
            )
            if penalties == "units" and extra.requires_grad:  # a penalty exists only where a unit made it
                (loss / len(paths)).backward(retain_graph=True)
                (extra / len(paths)).backward(inputs=[q for q in net.units.parameters() if q.requires_grad])
            else:
                (loss + extra).div(len(paths)).backward()
            total += float((loss + extra).detach()) / len(paths)
        if not math.isfinite(total):
            raise NonFiniteLossError(f"supernet loss is {total} at step {step}")
        opt.step()
        losses.append(total)
        if path is not None and (step + 1) % save_every == 0:
            _save(path, sn, opt, step + 1, losses)
    if path is not None:
        _save(path, sn, opt, cfg.steps, losses)
    return SupernetRun(cfg.steps, cfg.steps * len(sn.unit_names), losses, time.perf_counter() - began)


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
) -> tuple[float, dict[str, dict[str, float]]]:
    """Delta-m (against ``reference``, e.g. the single-task baseline's metrics) and metrics of
    ``path`` on the supernet: BatchNorm recalibrated on ``images``
    (``recalibrate``: ``all`` of it, ``fusion`` the units' only, ``off``), then evaluated on
    ``val`` (a data set or ``train.eval_loader``).
    ``finetune``: first train a copy of the path for ``finetune.steps`` (the supernet is left as
    it was), the other known fix for weight-sharing rankings, at that many path steps per plan."""
    if recalibrate not in ("all", "fusion", "off"):
        raise ValueError(f"recalibrate must be all, fusion or off, got {recalibrate!r}")
    dev = torch.device(device)
    sn.to(dev)
    saved = {k: v.clone() for k, v in sn.state_dict().items() if not v.is_floating_point() or "running" in k}
    try:  # the supernet as it was afterwards, so no score depends on the one before it
        net = sn.subnet(path)
        if finetune is not None:
            net = copy.deepcopy(net)
            fit(net, exp.tasks(), exp.datasets()[0], None, finetune, device=dev)
        if recalibrate != "off":
            recalibrate_batchnorm(net, (x.to(dev) for x in images), net.units if recalibrate == "fusion" else None)
        metrics = evaluate(net, exp.tasks(), val, device=dev)
    finally:
        sn.load_state_dict(saved, strict=False)
    return exp.delta_m(metrics, reference), metrics


def default_steps(exp: Experiment, sn: SuperNet) -> int:
    """One warm start's worth of path steps: ``train.steps`` divided among each step's paths."""
    return max(1, exp.recipe.train_config().steps // len(sn.unit_names))


# ---- the supernet as a job of a study (search.mode: supernet) ----------------------------------
SUPERNET = "supernet"  # the user attribute (and queued parameter) of the study's supernet job


def is_supernet_job(t: Any) -> bool:
    return t.user_attrs.get(SUPERNET) is not None


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
) -> list[dict[str, Any]]:
    """Score ``n`` plans (placement x unit) drawn by TPE in the study's scoring study, each marked
    ``supernet_scored``, each after ``search.supernet_score_steps`` steps of training a copy of its
    path (``score_path``); a resumed call scores only those still missing. Returns every scored
    plan, best first, one entry per distinct path: ``{path, score, trial}``."""
    study = _scoring_study(settings)
    images = calibration_images(exp, cfg, cfg.bn_calibration_batches)
    val = exp.datasets()[1]
    steps = SearchSpace.from_dict(exp.recipe.search).supernet_score_steps
    tune = dataclasses.replace(cfg, steps=steps, eval_steps=[], progress=False) if steps else None
    done = {path_key(t.user_attrs["path"]): t.value for t in study.get_trials(deepcopy=False) if t.value is not None}
    while len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < n:
        trial = study.ask()
        path = {p: trial.suggest_categorical(f"unit@{p}", sn.unit_names) for p in sn.point_names}
        key = path_key(path)
        if key not in done:
            done[key], metrics = score_path(sn, path, exp, reference, images, val, device, finetune=tune)
            trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("path", path)
        trial.set_user_attr("supernet_scored", True)
        study.tell(trial, done[key])
    best: dict[str, dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        key = path_key(t.user_attrs["path"])
        if key not in best:
            best[key] = {"path": t.user_attrs["path"], "score": t.value, "trial": t.number}
    return sorted(best.values(), key=lambda r: -r["score"])


def supernet_job(objective: Any, trial: Any) -> list[float]:
    """The study's supernet job: build it from the warm start, train it (resuming from its
    checkpoint in the artefact folder), score ``search.supernet_plans`` plans on it, and record
    the ranking in the trial, whose slots train the best plans stand-alone. Its value is 0: it is
    no competitor (``leaderboard.is_ranked``)."""
    from fusionsearch.search.storage import artifact_dir

    exp, space, settings = objective.exp, objective.space, objective.settings
    warm = objective.warm_start()
    sn = build_supernet(exp, warm, seed=settings.seed, space=space)
    cfg = exp.recipe.train_config(seed=settings.seed)
    cfg.steps = space.supernet_steps or default_steps(exp, sn)
    cfg.base_lr *= space.finetune_lr_mult  # trained columns, as in a warm-started trial
    cfg.progress = objective.progress
    folder = artifact_dir(settings.storage, settings.artifacts) / "supernet"
    folder.mkdir(parents=True, exist_ok=True)
    run = train_supernet(sn, exp, cfg, objective.device, checkpoint=folder / f"{settings.study}.pt")
    reference = objective.single(wait=True)["metrics"]
    ranked = score_plans(sn, exp, settings, space.supernet_plans, reference, cfg, objective.device)
    top = [r for r in ranked if any(u != NONE_UNIT for u in r["path"].values())][: max(1, settings.trials)]
    trial.set_user_attr("supernet_top", top)
    trial.set_user_attr("steps", run.steps)
    scoring = len(ranked) * space.supernet_score_steps  # each scored plan's copy trains that long
    trial.set_user_attr("path_steps", run.path_steps + scoring)
    trial.set_user_attr("supernet_training_path_steps", run.path_steps)
    trial.set_user_attr("supernet_scored_plans", len(ranked))
    trial.set_user_attr("supernet_seconds", run.seconds)
    objective.log(f"supernet: {run.path_steps} path steps, {len(ranked)} plans scored, best {top[0]['score']:+.2f}")
    return [0.0 for _ in settings.objectives]


def supernet_slot(objective: Any, trial: Any, sampled: Any) -> Any:
    """A slot of a supernet study: the supernet's ``slot``-th best plan (placement x unit, no
    shared prefix, no shortcut: what the supernet scored), its hyperparameters drawn by the
    study's sampler; ``sampled`` draws a trial from a space (``SearchSpace.sample``)."""
    job = objective.wait_for(is_supernet_job, "the supernet")
    top = job.user_attrs["supernet_top"]
    slot = int(trial.user_attrs["slot"])
    pick = top[slot % len(top)]
    space = objective.space
    fixed = {**space.fixed, **{f"unit@{p}": u for p, u in pick["path"].items()}, "shortcut": False}
    if space.shared_prefix:
        fixed["shared_prefix"] = NONE_UNIT
    trial.set_user_attr("supernet_rank", slot % len(top) + 1)
    trial.set_user_attr("supernet_score", pick["score"])
    return sampled(dataclasses.replace(space, fixed=fixed))
