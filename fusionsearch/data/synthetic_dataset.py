"""The synthetic scenes as a torch Dataset (seg + normals + depth, and with ``boxes`` the objects'
boxes for ``det`` and ``box_attr``), generated on the fly."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from fusionsearch.data.base import MultiTaskDataset, register_dataset
from fusionsearch.data.synthetic import CLASSES, render_scene
from fusionsearch.data.synthetic_boxes import BOX_ATTRIBUTES, BOX_CLASSES, scene_boxes
from fusionsearch.data.transforms import normalize_image
from fusionsearch.errors import ArgumentError
from fusionsearch.tasks.boxes import BOXES, make_boxes
from fusionsearch.tasks.labels import LabelKind

__all__ = ["SyntheticScenes"]

_SPLITS = {"train": 0, "val": 1, "test": 2}


@register_dataset("synthetic")
class SyntheticScenes(MultiTaskDataset):
    """Procedural indoor scenes: ``{"image", "seg", "normal", "depth"}`` per item.

    Item ``i`` of a split is a pure function of (seed, split, i, size): the same on every machine
    and in every worker, and splits never share a scene. ``image`` is ImageNet-normalised (3, H, W);
    ``seg`` (H, W) int64 over ``CLASSES``; ``normal`` (3, H, W) unit vectors in camera coordinates;
    ``depth`` (1, H, W) in scene units.

    ``boxes=True`` (a recipe's ``data: {name: synthetic, boxes: true}``) adds ``det`` and
    ``box_attr``: the same ``boxes``-kind dict under both keys, every visible object's tight box
    (xyxy pixel edges), its shape as class 1..3 (``box_classes``) and its 0/1 attributes
    (``box_attributes``; ``data.synthetic_boxes`` defines them). Without it the items are exactly
    what they always were (the boxes come from records the renderer keeps, drawing nothing).
    """

    deterministic = True  # item i is a pure function of (seed, split, i, size): safe to cache
    classes = CLASSES
    num_classes = len(CLASSES)
    box_classes = BOX_CLASSES
    box_attributes = BOX_ATTRIBUTES
    tasks = {"seg": len(CLASSES), "normal": 3, "depth": 1}
    label_kinds: ClassVar[dict[str, LabelKind]] = {"det": BOXES, "box_attr": BOXES}
    default_lengths = {"train": 1000, "val": 100, "test": 100}
    # twice the largest real set fusionsearch reads (IMDB-WIKI, about 0.5 M faces); rendering a
    # scene takes milliseconds, so a million already costs an hour per pass
    max_length = 1_000_000
    takes_seed = True

    @staticmethod
    def tasks_for(boxes: bool = False, tasks: Sequence[str] | None = None, **_: object) -> dict[str, int]:
        """The labels the scenes provide: seg, normal, depth, and with ``boxes`` (or when the study's
        ``tasks`` name a region task) det (3 classes) and box_attr (12 attributes)."""
        extra = {"det": len(BOX_CLASSES), "box_attr": len(BOX_ATTRIBUTES)} if _with_boxes(boxes, tasks) else {}
        return {**SyntheticScenes.tasks, **extra}

    def __init__(
        self,
        split: str = "train",
        length: int = 1000,
        size: int | tuple[int, int] = 128,
        seed: int = 0,
        boxes: bool = False,
        tasks: Sequence[str] | None = None,
    ):
        if split not in _SPLITS:
            raise ArgumentError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}")
        if length < 1:
            raise ArgumentError(f"length must be positive, got {length}")
        if seed < 0:
            raise ArgumentError(f"data.seed must be >= 0, got {seed}")
        self.split = split
        self.length = int(length)
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.seed = int(seed)
        self.boxes = _with_boxes(boxes, tasks)
        self.tasks = self.tasks_for(boxes=self.boxes)

    def __len__(self) -> int:
        return self.length

    def scene_seed(self, index: int) -> int:
        """The seed that draws scene ``index`` of this split (the same scene on every machine)."""
        return int(np.random.SeedSequence([self.seed, _SPLITS[self.split], index]).generate_state(1)[0])

    def category_counts(self, task: str) -> dict[str, int]:
        """Training label counts per category over this split, keyed as the task's
        ``per_category``: pixels per class of ``seg`` (class index), objects per class of ``det``
        (1..C) and positive objects per attribute of ``box_attr`` (attribute index). A pure
        function of (seed, split, length, size): rendered once per process."""
        if task == "seg":
            return {str(c): n for c, n in enumerate(_seg_pixels(self.seed, self.split, self.length, self.size))}
        if task not in ("det", "box_attr") or not self.boxes:
            raise ArgumentError(
                f"the synthetic scenes count categories of seg, and with boxes of det and box_attr; not {task!r}"
            )
        counts = _box_counts(self.seed, self.split, self.length, self.size, task)
        return {str(c + (1 if task == "det" else 0)): n for c, n in enumerate(counts)}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        s = render_scene(self.scene_seed(index), *self.size)
        image = torch.from_numpy(s.image).permute(2, 0, 1)
        item: dict[str, Any] = {
            "image": normalize_image(image),
            "seg": torch.from_numpy(s.seg),
            "normal": torch.from_numpy(s.normal).permute(2, 0, 1).contiguous(),
            "depth": torch.from_numpy(s.depth)[None],
        }
        if self.boxes:
            label = make_boxes(*scene_boxes(s), num_attrs=len(BOX_ATTRIBUTES))
            item["det"] = item["box_attr"] = label
        return item


def _with_boxes(boxes: bool, tasks: Sequence[str] | None) -> bool:
    """Boxes are rendered when asked for, or when the study's tasks (which ``Experiment`` passes
    to a data set that takes ``tasks``) include a region task: ``--tasks det,box_attr`` needs no flag."""
    return bool(boxes) or any(t in ("det", "box_attr") for t in tasks or ())


@functools.lru_cache(maxsize=8)
def _seg_pixels(seed: int, split: str, length: int, size: tuple[int, int]) -> tuple[int, ...]:
    """Pixels of each class over the first ``length`` scenes of a split (one render each)."""
    data = SyntheticScenes(split, length, size, seed)
    total = np.zeros(len(CLASSES), dtype=np.int64)
    for i in range(length):
        total += np.bincount(render_scene(data.scene_seed(i), *size).seg.ravel(), minlength=len(CLASSES))
    return tuple(int(n) for n in total)


@functools.lru_cache(maxsize=8)
def _box_counts(seed: int, split: str, length: int, size: tuple[int, int], task: str) -> tuple[int, ...]:
    """Objects per class (``det``) or positive objects per attribute (``box_attr``) over the first
    ``length`` scenes of a split (one render each, what the cache saves: README, Tasks, data and training)."""
    data = SyntheticScenes(split, length, size, seed)
    total = np.zeros(len(BOX_CLASSES if task == "det" else BOX_ATTRIBUTES), dtype=np.int64)
    for i in range(length):
        _, labels, attrs = scene_boxes(render_scene(data.scene_seed(i), *size))
        total += np.bincount(labels - 1, minlength=len(total)) if task == "det" else attrs.sum(0).astype(np.int64)
    return tuple(int(n) for n in total)
