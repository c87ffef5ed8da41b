"""How to train: ``TrainConfig``, the settings of one training run, and the values its fields
may take, each checked when the config is made (a recipe's typo stops before any study exists).

Cut from the trainer because the loaders, the search's recipes and the command line read a
config without training anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fusionsearch.errors import FusionSearchError

__all__ = ["TrainConfig", "max_memory_bytes", "BN_INITS", "CHECKPOINTS", "LOADER_STARTS", "MAX_LOADER_WORKERS"]


BN_INITS = ("auto", "paper", "calibrated")
MAX_LOADER_WORKERS = 64  # data-loader processes per trial: more only multiplies memory
LOADER_STARTS = ("fork", "spawn", "forkserver")
CHECKPOINTS = ("none", "segments")


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
    # activation checkpointing: "segments" keeps only each stitched segment's input in training and
    # recomputes the segment's activations in the backward pass (``StitchedNet.checkpoint_segments``):
    # less memory for more compute; "none" runs the forward pass as it always has
    checkpoint: Literal["none", "segments"] = "none"
    # the memory a trial may use, in GiB: a plan whose predicted peak (``train.memory``) is larger
    # is not trained, it fails as "does not fit" (final). None: no limit on the CPU; on a GPU the
    # free memory is the limit either way (the smaller of the two when both are known)
    max_memory: float | None = None
    # partial labels: a task's loss in a batch that labels it on n of its images is its mean over
    # those n, times n / batch_size ("batch": every labelled image weighs the same in every task) or
    # times 1 ("labelled": a full-strength mean whatever n); a fully labelled batch is the same
    # under both (``train.partial``)
    partial_loss: Literal["batch", "labelled"] = "batch"
    # "mixed": each step a batch of the training set, as it comes; "per_task": each step a full batch
    # of each task's labelled images, each labelled for its own task only (``train.partial``);
    # "auto": per_task on partial labels (``data.labelled``), mixed on fully labelled data
    batches: Literal["auto", "mixed", "per_task"] = "auto"

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
        max_memory_bytes(self.max_memory)  # None, or a number of GiB > 0, or one line saying what it got
        bad = [s for s in self.eval_steps or [] if isinstance(s, bool) or not isinstance(s, int) or s < 1]
        if bad:
            raise FusionSearchError(f"train eval_steps must be whole numbers >= 1, got {bad}")
        choices = {
            "optimizer": ("sgd", "adamw"),
            "bn_init": BN_INITS,
            "loader_start": (*LOADER_STARTS, None),
            "checkpoint": CHECKPOINTS,
            "partial_loss": ("batch", "labelled"),
            "batches": ("auto", "mixed", "per_task"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                words = ", ".join("null" if a is None else a for a in allowed)
                raise FusionSearchError(f"train {name} must be one of {words}, got {getattr(self, name)!r}")
        if self.weighting is not None:
            from fusionsearch.tasks.weighting import make_weighting

            spec = {"name": self.weighting} if isinstance(self.weighting, str) else dict(self.weighting)
            if set(spec) - {"name", "args"} or "name" not in spec:
                raise FusionSearchError(f"train weighting must be a name or {{name, args}}, got {self.weighting!r}")
            # built once, so that its arguments' types and bounds are checked with the recipe (their
            # number per task where the tasks are known: ``Recipe``, the trainer)
            make_weighting(spec, None, where="train.weighting")


def max_memory_bytes(value: float | None) -> int | None:
    """``train.max_memory``'s GiB as bytes (None: no limit); a value that is not a number > 0
    stops here with one line."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise FusionSearchError(f"train max_memory must be a number of GiB > 0, got {value!r}")
    return int(value * (1 << 30))
