"""Training a stitched network: parameter groups, schedule, AMP, evaluation, checkpoints.

The data order and every random draw are functions of (seed, step), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from fusionsearch.errors import CheckpointError, FusionSearchError
from fusionsearch.nets.net import StitchedNet
from fusionsearch.tasks.task import Task
from fusionsearch.tasks.weighting import Weighting, make_weighting
from fusionsearch.train.calibration import calibrate_batchnorm

__all__ = [
    "TrainConfig",
    "NonFiniteLossError",
    "fit",
    "evaluate",
    "evaluates_at",
    "lr_factor",
    "calibrates",
    "calibrate",
    "BN_INITS",
    "amp_dtype",
    "deterministic_mode",
    "train_loader",
    "eval_loader",
    "loader_workers",
    "item_seed",
    "LOADER_STARTS",
]


BN_INITS = ("auto", "paper", "calibrated")
MAX_LOADER_WORKERS = 64  # data-loader processes per trial: more only multiplies memory
AUTO_LOADER_WORKERS = 4  # num_workers=None on a GPU: at most this many per trial (fewer on fewer cores)
LOADER_STARTS = ("fork", "spawn", "forkserver")


class NonFiniteLossError(FusionSearchError, FloatingPointError):
    """A NaN or infinite loss: the run stops (a search marks the trial failed)."""


@dataclass
class TrainConfig:
    """How to train. Defaults follow the papers: SGD with momentum 0.9 and a poly schedule."""

    steps: int = 300
    batch_size: int = 8
    base_lr: float = 0.01
    optimizer: str = "sgd"  # or "adamw"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    head_lr_mult: float = 1.0
    warmup_steps: int = 0
    poly_power: float = 0.9
    eval_every: int = 100
    eval_steps: list[int] | None = None  # evaluate at exactly these steps (and the last) instead
    grad_clip: float | None = None
    amp: bool | None = None  # None: on for CUDA (bf16 from sm80, fp16 + GradScaler before: amp_dtype), off on CPU
    channels_last: bool | None = None  # None: on for CUDA
    # data-loader processes: None = auto (loader_workers): none on the CPU or for a data set held in
    # memory, else up to 4 per GPU; every item's augmentation is a function of (seed, position), so
    # the batches are the same for any number of workers and on resume
    num_workers: int | None = None
    loader_start: str | None = None  # their start method: fork, spawn or forkserver; None: Python's default
    seed: int = 0
    progress: bool = True
    weighting: str | dict[str, Any] | None = None  # a method name or {name, args}; None: fixed
    # how new BatchNorm in fusion units and the shortcut starts: "paper" (statistics (0, 1),
    # affine (1, 0)), "calibrated" (statistics from bn_calibration_batches training batches,
    # affine making the unit its input mix: ``calibration``), "auto": calibrated when the
    # columns hold trained weights (warm start, column_weights), else the papers' start
    bn_init: str = "auto"
    bn_calibration_batches: int = 8
    # torch's deterministic algorithms for this run (cuDNN without autotuning, a fixed cuBLAS
    # workspace, bilinear resizing as matrix products): on a GPU, a plan trained twice on one seed
    # gives the same numbers, as it does on the CPU anyway (``deterministic_mode``)
    deterministic: bool = False

    def __post_init__(self) -> None:
        """Values no run can use stop here, before any study or net exists (a study of 0-step
        trials would train nothing and still declare a "best")."""
        at_least = {
            "steps": 1,
            "batch_size": 1,
            "eval_every": 1,
            "warmup_steps": 0,
            "num_workers": 0,
            "bn_calibration_batches": 1,
        }
        for name, low in at_least.items():
            value = getattr(self, name)
            if name == "num_workers" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise FusionSearchError(f"train {name} must be a whole number >= {low}, got {value!r}")
        for name in ("base_lr", "momentum", "weight_decay", "head_lr_mult", "poly_power"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise FusionSearchError(f"train {name} must be a finite number >= 0, got {value!r}")
        if not self.base_lr > 0:
            raise FusionSearchError(f"train base_lr must be > 0, got {self.base_lr!r}")
        if self.momentum >= 1:
            raise FusionSearchError(f"train momentum must be < 1 (0.9 in the papers), got {self.momentum!r}")
        if self.num_workers is not None and self.num_workers > MAX_LOADER_WORKERS:
            raise FusionSearchError(f"train num_workers must be <= {MAX_LOADER_WORKERS}, got {self.num_workers}")
        clip = self.grad_clip
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 0 < clip < 1e30):
            raise FusionSearchError(f"train grad_clip must be a number > 0 (or null: no clipping), got {clip!r}")
        bad = [s for s in self.eval_steps or [] if isinstance(s, bool) or not isinstance(s, int) or s < 1]
        if bad:
            raise FusionSearchError(f"train eval_steps must be whole numbers >= 1, got {bad}")
        choices = {"optimizer": ("sgd", "adamw"), "bn_init": BN_INITS, "loader_start": (*LOADER_STARTS, None)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                words = ", ".join("null" if a is None else a for a in allowed)
                raise FusionSearchError(f"train {name} must be one of {words}, got {getattr(self, name)!r}")
        if self.weighting is not None:
            from fusionsearch.tasks.weighting import make_weighting

            spec = {"name": self.weighting} if isinstance(self.weighting, str) else dict(self.weighting)
            if set(spec) - {"name", "args"} or "name" not in spec:
                raise FusionSearchError(f"train weighting must be a name or {{name, args}}, got {self.weighting!r}")
            # built once, so that its arguments' types and ranges are checked with the recipe
            make_weighting(spec, ("task_a", "task_b"), where="train.weighting")


@contextlib.contextmanager
def deterministic_mode(on: bool) -> Iterator[None]:
    """Within: ``torch.use_deterministic_algorithms(True)``, cuDNN deterministic and not
    autotuned, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS's condition for repeatable
    matrix products), when ``on``; torch's and cuDNN's previous settings come back after. The
    cuBLAS variable stays set: cuBLAS reads it when it creates a handle, so set it before the
    process's first CUDA matrix product (``--deterministic`` on the command line does, as every
    trial of the study runs deterministic) for the earlier handles to repeat as well."""
    if not on:
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def calibrates(net: StitchedNet, cfg: TrainConfig) -> bool:
    """Whether ``fit`` calibrates the new units' BatchNorm before training (``cfg.bn_init``)."""
    return cfg.bn_init == "calibrated" or (cfg.bn_init == "auto" and net.columns_trained)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up from 10% to 100%, then poly decay (1 - p)^power to 0 at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return 0.1 + 0.9 * step / max(1, cfg.warmup_steps)
    span = max(1, cfg.steps - cfg.warmup_steps)
    return max(0.0, 1 - (step - cfg.warmup_steps) / span) ** cfg.poly_power


def item_seed(seed: int, position: int) -> int:
    """The seed of the random draws (flips) of the ``position``-th item of a run's training stream:
    a function of the two alone, so that no worker count, prefetching or resume changes a flip,
    and paired plans, which draw differently in their forward passes, still see the same images."""
    return (seed * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 63)


class _StepSampler(Sampler[list[tuple[int, int]]]):
    """Batches as a function of the step: epoch e is randperm(seed + e), and the item at stream
    position k comes with its draw seed ``item_seed(seed, k)``."""

    def __init__(self, n: int, batch: int, seed: int, start: int, steps: int) -> None:
        self.n, self.batch, self.seed, self.start, self.steps = n, batch, seed, start, steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perms: dict[int, Tensor] = {}
        for step in range(self.start, self.steps):
            out = []
            for k in range(step * self.batch, (step + 1) * self.batch):
                epoch, pos = divmod(k, self.n)
                if epoch not in perms:
                    perms.clear()
                    perms[epoch] = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
                out.append((int(perms[epoch][pos]), item_seed(self.seed, k)))
            yield out

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


class _Seeded(Dataset):
    """Item ``(i, s)`` is ``data[i]`` drawn with torch's generator seeded to ``s`` (the data sets
    augment with the global generator), and the caller's generator left as it was. Picklable: a
    spawned loader worker rebuilds it from ``data``."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.data[index]


def loader_workers(data: Dataset, cfg: TrainConfig, device: torch.device) -> int:
    """The data-loader processes of a run: ``cfg.num_workers`` if set; else (auto) none on the CPU,
    where they would take the cores the training needs, and none for a data set held in memory
    (``in_memory``: the generated sets, un-augmented splits), whose items cost nothing to read
    and whose cache each worker process would rebuild; else, on a GPU, up to 4, within this
    process's share of the cores (torch's thread count: ``--threads``, which ``run --workers``
    divides among its worker processes), one of them left to the training loop."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    if device.type != "cuda" or getattr(data, "in_memory", False):
        return 0
    return max(0, min(AUTO_LOADER_WORKERS, torch.get_num_threads() - 1))


def _loader_args(data: Dataset, cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    workers = loader_workers(data, cfg, device)
    args: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers:
        args["persistent_workers"] = True  # an evaluation loader is iterated many times per run
        if cfg.loader_start is not None:
            args["multiprocessing_context"] = cfg.loader_start
    return args


def train_loader(data: Dataset, cfg: TrainConfig, device: torch.device, start: int = 0) -> DataLoader:
    """The batches that ``fit`` trains on from step ``start``: this seed's training order, each item
    drawn with its own seed (``item_seed``), in ``loader_workers`` processes. The same batches,
    flips included, for any worker count and after a resume."""
    sampler = _StepSampler(len(data), cfg.batch_size, cfg.seed, start, cfg.steps)  # type: ignore[arg-type]
    return DataLoader(_Seeded(data), batch_sampler=sampler, **_loader_args(data, cfg, device))


def eval_loader(data: Dataset, cfg: TrainConfig, device: torch.device) -> DataLoader:
    """The loader of ``fit``'s evaluations: built once per run, its worker processes kept between
    evaluations instead of started again at each."""
    return DataLoader(data, batch_size=cfg.batch_size, **_loader_args(data, cfg, device))


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


def _to(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast type on ``device``: bf16 on the CPU and on GPUs with bf16 units (compute
    capability 8.0 on: Ampere, Hopper), fp16 before them (T4, V100). Asked of *this* device, not
    the current one, and not ``torch.cuda.is_bf16_supported()``, which in torch 2.14 answers True
    on pre-Ampere GPUs too, where bf16 is emulated: slower than fp32, and the GradScaler that fp16
    needs was then never enabled."""
    if device.type != "cuda":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


def _autocast(device: torch.device, enabled: bool) -> Any:
    return torch.autocast(device.type, dtype=amp_dtype(device), enabled=enabled)


def _scaler(device: torch.device, use_amp: bool) -> torch.amp.GradScaler:
    """A GradScaler, enabled only where fp16 autocast runs (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype(device) == torch.float16)


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
        loader = DataLoader(data, batch_size=batch_size, num_workers=num_workers, pin_memory=dev.type == "cuda")
    for batch in loader:
        batch = _to(batch, dev)
        with _autocast(dev, use_amp):
            preds = net(batch["image"])
        for name, task in tasks.items():
            task.update(preds[name].float(), batch[name])
    net.train(was_training)
    return {name: task.compute() for name, task in tasks.items()}


def _optimizer(net: StitchedNet, cfg: TrainConfig, weighting: Weighting | None = None) -> torch.optim.Optimizer:
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
        missing = [t for t in net.tasks if t not in tasks]
        if missing:
            raise FusionSearchError(f"no Task given for {missing}; tasks has {sorted(tasks)}")
        dev = _device(net, device)
        use_amp = dev.type == "cuda" if cfg.amp is None else cfg.amp
        net.to(dev)
        if (dev.type == "cuda") if cfg.channels_last is None else cfg.channels_last:
            net.to(memory_format=torch.channels_last)
        weighting = make_weighting(cfg.weighting, list(net.tasks), cfg.seed).to(dev)
        opt = _optimizer(net, cfg, weighting)
        scaler = _scaler(dev, use_amp)
        history: dict[str, Any] = {"losses": [], "evals": []}
        start = 0
        ckpt = Path(checkpoint) if checkpoint is not None else None
        if ckpt is not None and resume and ckpt.is_file():
            try:
                state = torch.load(ckpt, map_location=dev, weights_only=True)
                net.load_state_dict(state["net"])
                if "weighting" in state:
                    weighting.load_state_dict(state["weighting"])
                opt.load_state_dict(state["optimizer"])
                scaler.load_state_dict(state["scaler"])
                start, history = int(state["step"]), state["history"]
            except Exception as e:  # truncated, refused by weights_only, another net's, or not ours at all
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise CheckpointError(
                    f"checkpoint {str(ckpt)!r} cannot be resumed ({type(e).__name__}: {first}):"
                    " move it away to start over, or give the --checkpoint of this run"
                ) from None
        every = checkpoint_every or cfg.eval_every
        # the lr of step s is initial_lr x lr_factor(s, cfg): a pure function of the step, so a resumed
        # run continues the schedule exactly (LambdaLR restarted at ``start``, no state of its own)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg), last_epoch=start - 1)

        loader = train_loader(train_data, cfg, dev, start)
        val_loader = eval_loader(val_data, cfg, dev) if val_data is not None else None
        if start == 0 and calibrates(net, cfg):
            # before the optimiser's first step, from the first training batches of this seed:
            # deterministic, so paired plans and workers on other machines start identically
            calibrate(net, train_data, cfg, dev)
        progress = _progress(cfg.progress, cfg.steps, start)
        net.train()
        step = start
        with progress:
            bar = progress.add_task("training", total=cfg.steps, completed=start, loss=float("nan"))
            for batch in loader:
                torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout etc.: a function of the step
                # which tasks the batch labels, read on the host before the copy: no device sync
                present = [t for t in net.tasks if bool(tasks[t].labelled(batch[t]).any())]
                batch = _to(batch, dev)
                image = batch["image"]
                if (dev.type == "cuda") if cfg.channels_last is None else cfg.channels_last:
                    image = image.contiguous(memory_format=torch.channels_last)
                logged = _step(net, tasks, batch, image, cfg, dev, use_amp, opt, scaler, weighting, step, present)
                if logged == logged:
                    schedule.step()
                else:  # a skipped step (no labels) is not the misuse that torch warns of
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler", UserWarning)
                        schedule.step()
                step += 1
                history["losses"].append(logged)  # the present tasks' weighted sum (NaN: none labelled)
                progress.update(bar, advance=1, loss=logged)
                if val_loader is not None and evaluates_at(step, cfg):
                    metrics = evaluate(net, tasks, val_loader, device=dev)
                    history["evals"].append({"step": step, "metrics": metrics, "weights": weighting.weights()})
                    if callback is not None:
                        callback(step, metrics)
                stop = until is not None and step >= until
                if ckpt is not None and (step % every == 0 or step == cfg.steps or stop):
                    _save(ckpt, net, opt, scaler, step, history, cfg, weighting)
                if stop:
                    break
        history["step"] = step
        history["weighting"] = {"name": weighting.weighting_name, "state_dict": weighting.state_dict()}
        return history


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
    present: list[str] | None = None,
) -> float:
    """One optimiser step on ``batch``; returns the present tasks' weighted loss (NaN: none).

    Partial labels: a task that the batch labels on no image takes no part in the step (no loss,
    no gradient); a batch that labels no task at all changes nothing. ``present``: those tasks,
    if the caller read them from the batch before it went to the device.

    The losses come back to the host once, after the optimiser step, so the device is not made
    to wait before the backward pass; a NaN or infinite loss is reported then, at the same step
    (the run stops, and the net, now updated with it, is discarded with the failed run)."""
    if present is None:
        present = [t for t in net.tasks if bool(tasks[t].labelled(batch[t]).any())]
    opt.zero_grad(set_to_none=True)
    if not present:
        return float("nan")
    with _autocast(dev, use_amp):
        preds, extra = net(image, return_extra=True)
        losses = {t: tasks[t].loss_weight * tasks[t].loss(preds[t].float(), batch[t]) for t in present}
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
    sampler = _StepSampler(len(data), cfg.batch_size, cfg.seed, 0, n)  # type: ignore[arg-type]
    loader = DataLoader(_Seeded(data), batch_sampler=sampler)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        calibrate_batchnorm(net, loader, dev)


def _save(
    path: Path, net: StitchedNet, opt: Any, scaler: Any, step: int, history: dict, cfg: TrainConfig, weighting: Any
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {
            "step": step,
            "net": net.state_dict(),
            "weighting": weighting.state_dict(),
            "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict(),
            "history": history,
            "config": asdict(cfg),
        },
        tmp,
    )
    os.replace(tmp, path)  # never leave a half-written checkpoint


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
