"""The synthetic scenes as a torch Dataset (seg + normals + depth, and with ``boxes`` the objects'
boxes for ``det`` and ``box_attr``), generated on the fly."""

from __future__ import annotations

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
    takes_seed = True

    @staticmethod
    def tasks_for(boxes: bool = False, **_: object) -> dict[str, int]:
        """The labels the scenes provide: seg, normal, depth, and with ``boxes`` det (3 classes)
        and box_attr (12 attributes)."""
        extra = {"det": len(BOX_CLASSES), "box_attr": len(BOX_ATTRIBUTES)} if boxes else {}
        return {**SyntheticScenes.tasks, **extra}

    def __init__(
        self,
        split: str = "train",
        length: int = 1000,
        size: int | tuple[int, int] = 128,
        seed: int = 0,
        boxes: bool = False,
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
        self.boxes = bool(boxes)
        self.tasks = self.tasks_for(boxes=self.boxes)
        self._counts: dict[str, dict[str, int]] = {}

    def __len__(self) -> int:
        return self.length

    def scene_seed(self, index: int) -> int:
        return int(np.random.SeedSequence([self.seed, _SPLITS[self.split], index]).generate_state(1)[0])

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

    def category_counts(self, task: str) -> dict[str, int]:
        """Training label counts per category over the whole split: objects per class for ``det``,
        positive objects per attribute for ``box_attr``, pixels per class for ``seg``. It renders
        every scene of the split once (about 2 ms a scene at 64 x 64, 8 ms at 128 x 128 on one core), so the
        result is kept on the data set."""
        if task not in self._counts:
            self._counts[task] = self._count(task)
        return dict(self._counts[task])

    def _count(self, task: str) -> dict[str, int]:
        if task not in ("det", "box_attr", "seg") or (task != "seg" and not self.boxes):
            raise ArgumentError(
                f"category_counts: the synthetic scenes count seg, and with boxes det and box_attr; not {task!r}"
            )
        names = {"det": BOX_CLASSES, "box_attr": BOX_ATTRIBUTES, "seg": CLASSES}[task]
        total = np.zeros(len(names), dtype=np.int64)
        for i in range(self.length):
            s = render_scene(self.scene_seed(i), *self.size)
            if task == "seg":
                total += np.bincount(s.seg.ravel(), minlength=len(CLASSES))
                continue
            _, labels, attrs = scene_boxes(s)
            total += np.bincount(labels - 1, minlength=len(names)) if task == "det" else attrs.sum(0).astype(np.int64)
        return {n: int(c) for n, c in zip(names, total)}
