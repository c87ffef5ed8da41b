"""Bounds on a recipe's sizes from what a machine can hold and what its data set can produce,
checked when the recipe is loaded and again for what a run trains (``Experiment.train``).

A well-typed but huge value would otherwise pass every type check and then hang a trial or grow
it until the machine runs out of memory, long after the study started: ``batch_size: 1000000000``
(a batch sampler that lists a billion items), a generated set of a billion scenes (a permutation
of 8 GB, an evaluation that never ends), a billion calibration batches (the supernet holds its
calibration images). A per-task vector of a weighting (TorchJD's ``pref_vector``) has its length
checked here too, where the tasks are known.

Cut from ``recipe`` because these rules read the data set's class and the weighting's
declarations, not the recipe's shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fusionsearch.data import DATASETS
from fusionsearch.errors import FusionSearchError
from fusionsearch.tasks.weighting.spec import check_weighting
from fusionsearch.train.config import TrainConfig

__all__ = ["MAX_IMAGE_SIDE", "MAX_HELD_BYTES", "check_limits", "image_size"]

# the largest image side a recipe may ask for: one 4096 x 4096 batch of 8 with a ResNet's first
# activations already takes about 8 GiB; a typo such as 99999 must stop here, not in the allocator
MAX_IMAGE_SIDE = 4096
# the float32 input images a run holds at once: one batch, or the supernet's calibration batches
# (kept for every plan it scores). 2 GiB is a batch of 8 at the largest side; a network's
# activations take tens of times its input, so more never fits a GPU
MAX_HELD_BYTES = 2 << 30


def image_size(data: Mapping[str, Any]) -> tuple[int, int]:
    """(H, W) of the images: ``data.size`` is a side or [height, width] (default 128)."""
    size = data.get("size", 128)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def check_limits(data: Mapping[str, Any], tasks: Sequence[str], cfg: TrainConfig) -> None:
    """Raise a ``FusionSearchError`` naming the field whose value no run can hold or the data set
    cannot produce: the sizes and lengths of ``data`` (a recipe's section), ``cfg``'s batch and
    calibration batches at that image size, and ``cfg``'s weighting for ``tasks``."""
    for key in ("size", "train_length", "val_length"):
        value = data.get(key)
        if value is not None and min(value if isinstance(value, (list, tuple)) else [value]) < 1:
            raise FusionSearchError(f"data.{key} must be >= 1, got {value!r}")
    if max(image_size(data)) > MAX_IMAGE_SIDE:
        raise FusionSearchError(
            f"data.size {data.get('size')!r} is over {MAX_IMAGE_SIDE} pixels a side: a batch of such"
            " images and their activations would not fit in memory"
        )
    cls = DATASETS.get(str(data["name"]))
    most = getattr(cls, "max_length", None)  # a generated set's; a set of files has what its files hold
    for key in ("train_length", "val_length"):
        if most is not None and (data.get(key) or 0) > most:
            name, n = data["name"], data[key]
            raise FusionSearchError(f"data.{key} {n:,} is over the {most:,} items a split of the {name} data set holds")
    height, width = image_size(data)
    image = 3 * height * width * 4
    held = {"train.batch_size": cfg.batch_size, "train.bn_calibration_batches": cfg.bn_calibration_batches}
    held["train.bn_calibration_batches"] *= cfg.batch_size
    for key, images in held.items():
        if images * image > MAX_HELD_BYTES:
            raise FusionSearchError(
                f"{key} {getattr(cfg, key.partition('.')[2]):,} is too large: {images:,} images of {height} x {width}"
                f" held at once take {images * image / 2**30:,.0f} GiB, over the limit of {MAX_HELD_BYTES >> 30} GiB"
            )
    check_weighting(cfg.weighting, tasks, "train.weighting")
