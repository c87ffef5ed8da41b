"""The synthetic scenes as a torch Dataset (seg + normals + depth), generated on the fly."""

from __future__ import annotations

import functools

import numpy as np
import torch

from fusionsearch.data.base import MultiTaskDataset, register_dataset
from fusionsearch.data.synthetic import CLASSES, render_scene
from fusionsearch.data.transforms import normalize_image
from fusionsearch.errors import ArgumentError

__all__ = ["SyntheticScenes"]

_SPLITS = {"train": 0, "val": 1, "test": 2}


@register_dataset("synthetic")
class SyntheticScenes(MultiTaskDataset):
    """Procedural indoor scenes: ``{"image", "seg", "normal", "depth"}`` per item.

    Item ``i`` of a split is a pure function of (seed, split, i, size): the same on every machine
    and in every worker, and splits never share a scene. ``image`` is ImageNet-normalised (3, H, W);
    ``seg`` (H, W) int64 over ``CLASSES``; ``normal`` (3, H, W) unit vectors in camera coordinates;
    ``depth`` (1, H, W) in scene units.
    """

    deterministic = True  # item i is a pure function of (seed, split, i, size): safe to cache
    classes = CLASSES
    num_classes = len(CLASSES)
    tasks = {"seg": len(CLASSES), "normal": 3, "depth": 1}
    default_lengths = {"train": 1000, "val": 100, "test": 100}
    takes_seed = True

    def __init__(self, split: str = "train", length: int = 1000, size: int | tuple[int, int] = 128, seed: int = 0):
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

    def __len__(self) -> int:
        return self.length

    def scene_seed(self, index: int) -> int:
        return int(np.random.SeedSequence([self.seed, _SPLITS[self.split], index]).generate_state(1)[0])

    def category_counts(self, task: str) -> dict[str, int]:
        """Pixels per class of ``seg`` over this split (class index as a string): a pure function
        of (seed, split, length, size), rendered once per process (``_seg_pixels``)."""
        if task != "seg":
            raise ArgumentError(f"the synthetic scenes count categories of seg only, not {task!r}")
        counts = _seg_pixels(self.seed, self.split, self.length, self.size)
        return {str(c): n for c, n in enumerate(counts)}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        s = render_scene(self.scene_seed(index), *self.size)
        image = torch.from_numpy(s.image).permute(2, 0, 1)
        return {
            "image": normalize_image(image),
            "seg": torch.from_numpy(s.seg),
            "normal": torch.from_numpy(s.normal).permute(2, 0, 1).contiguous(),
            "depth": torch.from_numpy(s.depth)[None],
        }


@functools.lru_cache(maxsize=8)
def _seg_pixels(seed: int, split: str, length: int, size: tuple[int, int]) -> tuple[int, ...]:
    """Pixels of each class over the first ``length`` scenes of a split (one render each)."""
    data = SyntheticScenes(split, length, size, seed)
    total = np.zeros(len(CLASSES), dtype=np.int64)
    for i in range(length):
        total += np.bincount(render_scene(data.scene_seed(i), *size).seg.ravel(), minlength=len(CLASSES))
    return tuple(int(n) for n in total)
