"""Training on partly labelled data: how much a task's loss weighs in a batch that labels it on
some images only (``loss_scales``), and the per-task batches of a single-task reference
(``loading.TaskBatches``, ``loading.OneTaskAtATime``).

Why a scale at all: a task's ``loss`` is its mean over the labelled items, so a batch holding one
image labelled for segmentation gives a loss as loud as a batch of eight. A task labelled on 3%
of the images then speaks at full strength in every batch that holds one of them (about one in
five at batch size 8) and pulls a shared trunk its way far beyond its share of the labels.
``partial_loss: batch`` (the default) multiplies that mean by labelled items / batch size, so
every labelled image weighs the same in every task, and a fully labelled batch is unchanged
(the factor is exactly 1). Under AdamW a column that only its own task trains does not see the
factor (the update is normalised per parameter); a shared trunk does. The measurement that chose
it is ``benchmarks/partial_loss.py`` (README "When does fusion help?").

``batches: per_task`` is what a user without a multi-task net would train: each task's column on
full batches of that task's labelled images. Every step holds ``batch_size`` images for each task,
drawn from its labelled images alone, and each image carries only its own task's label, so a
column is trained by its task's images only. Only the partial-label wrapper (``data.labelled``)
says which images are labelled; on a data set without it every image is in every task's stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "PARTIAL_LOSSES",
    "BATCHES",
    "loss_scales",
    "label_shares",
    "batches_of",
    "shares_for",
    "images_per_step",
    "labelled_indices",
]

PARTIAL_LOSSES = ("batch", "labelled")
BATCHES = ("auto", "mixed", "per_task")


def loss_scales(
    masks: Mapping[str, Tensor], rule: str, batch_size: int, shares: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Task -> the factor of its loss in this step, for the tasks the batch labels (``masks``: a
    (B,) bool per task, read on the host); a task labelled nowhere in the batch is left out (no
    loss, no gradient). ``rule`` "labelled": 1 (the mean over the labelled items, whatever their
    number); "batch": labelled items / ``batch_size`` (1 on a fully labelled batch). Under
    ``batches: per_task`` (``shares`` given: each task's share of the training images it labels)
    every task's batch is full, and "batch" scales it by that share: what a mixed batch gives it
    on average, so that here too every labelled image weighs the same in every task."""
    out = {}
    for task, mask in masks.items():
        n = int(mask.sum())
        if n and rule == "labelled":
            out[task] = 1.0
        elif n:
            out[task] = float(shares[task]) if shares is not None else min(1.0, n / batch_size)
    return out


def batches_of(cfg_batches: str, data: Dataset) -> str:
    """``train.batches`` resolved for ``data``: "auto" is "per_task" where the data set says which
    items carry which label (``labelled_indices``: the partial-label wrapper, a folder) and some
    task is not labelled on every item, else "mixed" (fully labelled data trains as it always has)."""
    if cfg_batches != "auto":
        return cfg_batches
    if not callable(getattr(data, "labelled_indices", None)):
        return "mixed"
    n = len(data)  # type: ignore[arg-type]
    partial = any(len(labelled_indices(data, t)) < n for t in getattr(data, "tasks", {}))
    return "per_task" if partial else "mixed"


def images_per_step(cfg_batches: str, batch_size: int, data: Dataset, tasks: Sequence[str]) -> int:
    """The images one training step holds: ``batch_size``, or that many for each task under per_task."""
    return batch_size * (len(tasks) if batches_of(cfg_batches, data) == "per_task" else 1)


def label_shares(data: Dataset, tasks: Sequence[str]) -> dict[str, float]:
    """Task -> the share of ``data``'s items that carry its label (``labelled_indices``)."""
    n = len(data)  # type: ignore[arg-type]
    return {t: len(labelled_indices(data, t)) / n for t in tasks}


def labelled_indices(data: Dataset, task: str) -> list[int]:
    """The indices of ``data``'s items that carry ``task``'s label: the partial-label wrapper's
    (``PartialLabels.labelled_indices``), else every item."""
    own = getattr(data, "labelled_indices", None)
    if callable(own):
        return list(own(task))
    return list(range(len(data)))  # type: ignore[arg-type]


def shares_for(cfg_batches: str, data: Dataset, tasks: Sequence[str]) -> dict[str, float] | None:
    """What ``loss_scales`` takes as ``shares``: each task's labelled share under per-task batches
    (``batches_of``), None under mixed batches (the batch's own count says)."""
    return label_shares(data, tasks) if batches_of(cfg_batches, data) == "per_task" else None
