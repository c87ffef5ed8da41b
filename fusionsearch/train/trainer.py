"""Training a stitched network: parameter groups, schedule, the training steps, evaluation and
checkpoints (``fit``, ``evaluate``).

The data order and every random draw are functions of (seed, step), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have. What a run trains with lives
beside this module: its settings (``config``), its batches (``loading``) and its numerics
(``precision``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fusionsearch.data.batching import collate_for
from fusionsearch.errors import CheckpointError, FusionSearchError
from fusionsearch.interrupts import check_interrupt
from fusionsearch.nets.net import StitchedNet
from fusionsearch.paths import write_atomic
from fusionsearch.tasks.task import Task
from fusionsearch.tasks.weighting import Weighting, make_weighting
from fusionsearch.train.calibration import calibrate_batchnorm
from fusionsearch.train.config import TrainConfig
from fusionsearch.train.loading import Seeded, StepSampler, eval_loader, train_loader
from fusionsearch.train.partial import loss_scales, shares_for
from fusionsearch.train.precision import autocast, deterministic_mode, grad_scaler

__all__ = [
    "NonFiniteLossError",
    "fit",
    "evaluate",
    "evaluates_at",
    "lr_factor",
    "calibrates",
    "calibrate",
    "make_optimizer",
    "to_device",
]


class NonFiniteLossError(FusionSearchError, FloatingPointError):
    """A NaN or infinite loss: the run stops (a search marks the trial failed)."""


def calibrates(net: StitchedNet, cfg: TrainConfig) -> bool:
    """Whether ``fit`` calibrates the new units' BatchNorm before training (``cfg.bn_init``)."""
    return cfg.bn_init == "calibrated" or (cfg.bn_init == "auto" and net.columns_trained)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up from 10% to 100%, then poly decay (1 - p)^power to 0 at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return 0.1 + 0.9 * step / max(1, cfg.warmup_steps)
    span = max(1, cfg.steps - cfg.warmup_steps)
    return max(0.0, 1 - (step - cfg.warmup_steps) / span) ** cfg.poly_power


def evaluates_at(step: int, cfg: TrainConfig) -> bool:
    """Whether ``fit`` evaluates after ``step`` steps: the last step always; otherwise each of
    ``eval_steps`` (a pruner's rungs: no evaluation is spent where nobody reads it) or every
    ``eval_every`` steps."""
    if step == cfg.steps:
        return True
    if cfg.eval_steps is not None:
        return step in cfg.eval_steps
    return step % cfg.eval_every == 0


def _device(net: StitchedNet, device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch on ``device``: its tensors, also inside the lists and dicts a kind collates into."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


_to = to_device


@torch.no_grad()
def evaluate(
    net: StitchedNet,
    tasks: Mapping[str, Task],
    data: Dataset | DataLoader,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    amp: bool = False,
    num_workers: int = 0,
) -> dict[str, dict[str, float]]:
    """Metrics of every task over the whole of ``data`` (accumulated, not averaged per batch).

    In fp32 by default, also when training ran under AMP: autocast would round the depth and
    normal predictions to bf16 (3 significant digits) before they are scored. ``data`` may be a
    ``DataLoader`` (``eval_loader``: ``fit`` keeps one for all its evaluations); ``batch_size``
    and ``num_workers`` then do not apply."""
    dev = _device(net, device)
    use_amp = amp
    was_training = net.training
    net.eval()
    for t in tasks.values():
        t.reset()
    if isinstance(data, DataLoader):
        loader = data
    else:
        loader = DataLoader(
            data,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=dev.type == "cuda",
            collate_fn=collate_for(data),
        )
    for batch in loader:
        check_interrupt()  # a Ctrl-C that a finaliser swallowed stops the run here
        batch = _to(batch, dev)
        with autocast(dev, use_amp):
            preds = net(batch["image"])
        for name, task in tasks.items():
            task.update(preds[name].float(), batch[name])
    net.train(was_training)
    return {name: task.compute() for name, task in tasks.items()}


def make_optimizer(net: StitchedNet, cfg: TrainConfig, weighting: Weighting | None = None) -> torch.optim.Optimizer:
    """The optimiser of ``fit``: the net's parameter groups (``StitchedNet.param_groups``) and the
    weighting's learned ones, each remembering its ``initial_lr`` for the schedule."""
    groups = net.param_groups(cfg.base_lr, cfg.weight_decay, cfg.head_lr_mult, cfg.optimizer)
    if weighting is not None:
        groups += weighting.param_groups(cfg.base_lr)
    for g in groups:
        g["initial_lr"] = g["lr"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.base_lr)
    raise FusionSearchError(f"unknown optimizer {cfg.optimizer!r}: use 'sgd' or 'adamw'")


def fit(
    net: StitchedNet,
    tasks: Mapping[str, Task],
    train_data: Dataset,
    val_data: Dataset | None = None,
    cfg: TrainConfig | None = None,
    *,
    device: str | torch.device | None = None,
    callback: Callable[[int, dict[str, dict[str, float]]], None] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    until: int | None = None,
) -> dict[str, Any]:
    """Train ``net`` on ``train_data``; evaluate on ``val_data`` every ``cfg.eval_every`` steps.

    ``callback(step, metrics)`` receives each evaluation (a search reports it to Optuna, which
    may raise ``TrialPruned`` to stop). With ``checkpoint`` set, the state is saved there every
    ``checkpoint_every`` steps (default: at each evaluation) and at the end, and an existing file
    is resumed from. ``until`` stops after that step (schedule still for ``cfg.steps``), saving a
    checkpoint there: an interrupted run. Returns ``{"step", "losses", "evals"}``.
    """
    cfg = cfg or TrainConfig()
    with deterministic_mode(cfg.deterministic):
        run = _setup(net, tasks, cfg, device, train_data)
        ckpt = Path(checkpoint) if checkpoint is not None else None
        if ckpt is not None and resume and ckpt.is_file():
            _resume(run, ckpt)
        every = checkpoint_every or cfg.eval_every
        # the lr of step s is initial_lr x lr_factor(s, cfg): a pure function of the step, so a resumed
        # run continues the schedule exactly (LambdaLR restarted at ``start``, no state of its own)
        schedule = torch.optim.lr_scheduler.LambdaLR(run.opt, lambda s: lr_factor(s, cfg), last_epoch=run.start - 1)
        loader = train_loader(train_data, cfg, run.dev, run.start, tasks=list(net.tasks))
        val_loader = eval_loader(val_data, cfg, run.dev) if val_data is not None else None
        if run.start == 0 and calibrates(net, cfg):
            # before the optimiser's first step, from the first training batches of this seed:
            # deterministic, so paired plans and workers on other machines start identically
            calibrate(net, train_data, cfg, run.dev)
        progress = _progress(cfg.progress, cfg.steps, run.start)
        net.train()
        step = run.start
        with progress:
            bar = progress.add_task("training", total=cfg.steps, completed=run.start, loss=float("nan"))
            for batch in loader:
                check_interrupt()  # a safe point: a Ctrl-C that a finaliser swallowed stops the run here
                logged = _train_on(run, batch, step)
                _advance(schedule, logged)
                step += 1
                run.history["losses"].append(logged)  # the present tasks' weighted sum (NaN: none labelled)
                progress.update(bar, advance=1, loss=logged)
                if val_loader is not None and evaluates_at(step, cfg):
                    _evaluate_and_report(run, val_loader, step, callback)
                stop = until is not None and step >= until
                if ckpt is not None and (step % every == 0 or step == cfg.steps or stop):
                    _save(ckpt, net, run.opt, run.scaler, step, run.history, cfg, run.weighting)
                if stop:
                    break
        run.history["step"] = step
        run.history["weighting"] = {"name": run.weighting.weighting_name, "state_dict": run.weighting.state_dict()}
        return run.history


@dataclass
class _Run:
    """What one ``fit`` trains with, made once by ``_setup``; ``start`` and ``history`` are a
    resumed checkpoint's (``_resume``), else step 0 and nothing logged."""

    net: StitchedNet
    tasks: Mapping[str, Task]
    cfg: TrainConfig
    dev: torch.device
    use_amp: bool
    channels_last: bool
    weighting: Weighting
    opt: torch.optim.Optimizer
    scaler: Any
    start: int = 0
    history: dict[str, Any] = field(default_factory=lambda: {"losses": [], "evals": []})
    shares: dict[str, float] | None = None  # batches: per_task: each task's labelled share (``loss_scales``)


def _setup(
    net: StitchedNet, tasks: Mapping[str, Task], cfg: TrainConfig, device: str | torch.device | None, data: Dataset
) -> _Run:
    """Check that every task of the net has its ``Task``, put the net on its device (channels-last
    on CUDA by default, its segments checkpointed if ``cfg.checkpoint`` says so), and make the
    weighting, the optimiser and the AMP scaler; under per-task batches, each task's labelled share
    in ``data``."""
    missing = [t for t in net.tasks if t not in tasks]
    if missing:
        raise FusionSearchError(f"no Task given for {missing}; tasks has {sorted(tasks)}")
    dev = _device(net, device)
    use_amp = dev.type == "cuda" if cfg.amp is None else cfg.amp
    channels_last = (dev.type == "cuda") if cfg.channels_last is None else cfg.channels_last
    net.to(dev)
    net.checkpoint_segments = cfg.checkpoint == "segments"  # recomputed in the backward pass
    if channels_last:
        net.to(memory_format=torch.channels_last)
    weighting = make_weighting(cfg.weighting, list(net.tasks), cfg.seed).to(dev)
    opt = make_optimizer(net, cfg, weighting)
    scaler = grad_scaler(dev, use_amp)
    run = _Run(net, tasks, cfg, dev, use_amp, channels_last, weighting, opt, scaler)
    run.shares = shares_for(cfg.batches, data, list(net.tasks))  # per-task batches' loss scales
    return run


def _resume(run: _Run, ckpt: Path) -> None:
    """Load the net, weighting, optimiser and scaler of the checkpoint, and its step and history,
    into ``run``; a file that cannot be resumed is a ``CheckpointError`` saying what to do."""
    try:
        state = torch.load(ckpt, map_location=run.dev, weights_only=True)
        run.net.load_state_dict(state["net"])
        if "weighting" in state:
            run.weighting.load_state_dict(state["weighting"])
        run.opt.load_state_dict(state["optimizer"])
        run.scaler.load_state_dict(state["scaler"])
        run.start, run.history = int(state["step"]), state["history"]
    except Exception as e:  # truncated, refused by weights_only, another net's, or not ours at all
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"checkpoint {str(ckpt)!r} cannot be resumed ({type(e).__name__}: {first}):"
            " move it away to start over, or give the --checkpoint of this run"
        ) from None


def _train_on(run: _Run, batch: Mapping[str, Any], step: int) -> float:
    """One optimiser step of ``fit`` on a loader's ``batch``: the step's own seed, the tasks it
    labels read before the copy to the device, then ``_step``; returns its logged loss."""
    torch.manual_seed(run.cfg.seed * 1_000_003 + step)  # dropout etc.: a function of the step
    # which tasks the batch labels and on how many images, read on the host before the copy: no device sync
    masks = {t: run.tasks[t].labelled(batch[t]) for t in run.net.tasks}
    present = loss_scales(masks, run.cfg.partial_loss, run.cfg.batch_size, run.shares)
    batch = _to(batch, run.dev)
    image = batch["image"]
    if run.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    return _step(
        run.net,
        run.tasks,
        batch,
        image,
        run.cfg,
        run.dev,
        run.use_amp,
        run.opt,
        run.scaler,
        run.weighting,
        step,
        present,
    )


def _advance(schedule: torch.optim.lr_scheduler.LRScheduler, logged: float) -> None:
    """The schedule's next step, also after a step that a batch without labels skipped (NaN)."""
    if logged == logged:
        schedule.step()
    else:  # a skipped step (no labels) is not the misuse that torch warns of
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler", UserWarning)
            schedule.step()


def _evaluate_and_report(
    run: _Run,
    val_loader: DataLoader,
    step: int,
    callback: Callable[[int, dict[str, dict[str, float]]], None] | None,
) -> None:
    """Evaluate after ``step``, log the metrics with the weighting's current weights, and hand
    them to ``callback`` (which may stop the run: a pruned trial)."""
    metrics = evaluate(run.net, run.tasks, val_loader, device=run.dev)
    run.history["evals"].append({"step": step, "metrics": metrics, "weights": run.weighting.weights()})
    if callback is not None:
        callback(step, metrics)


def _step(
    net: StitchedNet,
    tasks: Mapping[str, Task],
    batch: Mapping[str, Any],
    image: Tensor,
    cfg: TrainConfig,
    dev: torch.device,
    use_amp: bool,
    opt: torch.optim.Optimizer,
    scaler: Any,
    weighting: Weighting,
    step: int,
    present: Mapping[str, float] | None = None,
) -> float:
    """One optimiser step on ``batch``; returns the present tasks' weighted loss (NaN: none).

    Partial labels: a task that the batch labels on no image takes no part in the step (no loss,
    no gradient); a batch that labels no task at all changes nothing. ``present``: task -> the
    factor of its loss (``partial.loss_scales``), if the caller read it from the batch before it
    went to the device.

    The losses come back to the host once, after the optimiser step, so the device is not made
    to wait before the backward pass; a NaN or infinite loss is reported then, at the same step
    (the run stops, and the net, now updated with it, is discarded with the failed run)."""
    if present is None:
        masks = {t: tasks[t].labelled(batch[t]) for t in net.tasks}
        present = loss_scales(masks, cfg.partial_loss, cfg.batch_size)
    opt.zero_grad(set_to_none=True)
    if not present:
        return float("nan")
    with autocast(dev, use_amp):
        preds, extra = net(image, return_extra=True)
        losses = {t: tasks[t].loss_weight * tasks[t].loss(preds[t].float(), batch[t]) * k for t, k in present.items()}
    weighting.backward(losses, extra.float(), net, step, scaler.scale)
    if cfg.grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    scaler.step(opt)
    scaler.update()
    values = torch.stack([*(v.detach().float() for v in losses.values()), extra.detach().float()]).tolist()
    plain = sum(values)
    if not math.isfinite(plain):
        parts = ", ".join(f"{t}={v:.4g}" for t, v in zip(losses, values))
        raise NonFiniteLossError(f"loss is {plain} at step {step} ({parts}, extra={values[-1]:.4g})")
    weighting.observe(dict(zip(losses, values)), step)
    return float(plain)


def calibrate(net: StitchedNet, data: Dataset, cfg: TrainConfig, dev: torch.device) -> None:
    """Calibrate the new BatchNorm on the first ``bn_calibration_batches`` batches of this seed's
    training order (the recipe's training data, no other), leaving the global generator as it was
    so the training that follows sees the same draws with or without calibration. The batches are
    those that training starts with, flips included (``train_loader``), read in the main process."""
    n = min(cfg.bn_calibration_batches, cfg.steps)
    sampler = StepSampler(len(data), cfg.batch_size, cfg.seed, 0, n)  # type: ignore[arg-type]
    loader = DataLoader(Seeded(data), batch_sampler=sampler, collate_fn=collate_for(data))
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        calibrate_batchnorm(net, loader, dev)


def _save(
    path: Path, net: StitchedNet, opt: Any, scaler: Any, step: int, history: dict, cfg: TrainConfig, weighting: Any
) -> None:
    state = {
        "step": step,
        "net": net.state_dict(),
        "weighting": weighting.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "history": history,
        "config": asdict(cfg),
    }
    write_atomic(path, lambda f: torch.save(state, f))  # never leave a half-written checkpoint


def _progress(enabled: bool, total: int, start: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        disable=not enabled,
    )
