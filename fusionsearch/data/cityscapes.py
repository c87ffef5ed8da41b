"""Cityscapes for multi-task learning, in the pre-processed layout of MTAN, read by LibMTL.

The layout of MTAN's release (lorenmt/mtan README, "Update - Jun 2019": 2-, 7- and 19-class labels
and inverse depth, at 128 x 256 or 256 x 512; 2975 train / 500 val images), the same ``{i}.npy``
reading as MTAN's ``im2im_pred/create_dataset.py`` NYUv2 class and LibMTL's
``examples/cityscapes/create_dataset.py`` (class ``CityScapes``)::

    root/{train,val}/image/{i}.npy      float (H, W, 3), RGB in [0, 1]
    root/{train,val}/label_7/{i}.npy    float (H, W), classes 0..6, -1 = unlabelled
    root/{train,val}/label_19/{i}.npy   float (H, W), classes 0..18, -1 = unlabelled
    root/{train,val}/depth/{i}.npy      float (H, W, 1), disparity as stored, 0 = invalid

LibMTL's copy of the 7-class set (its ``cityscapes2`` folder) names the folder ``label/``: read as
``label_7`` where ``label_7`` is absent. ``label_2`` of MTAN's release is not read.

Depth is the stored disparity (inverse depth, in the release's own scale; MTAN's and LibMTL's
abs err and rel err are computed on it), not metres: it is kept exactly as stored, and 0 (or any
negative or non-finite value) is invalid, as MTAN's ``depth_error`` and LibMTL's ``DepthMetric``
mask ``depth != 0``.

Tasks. ``classes`` (7, MTAN's and LibMTL's default, or 19) picks the set read as ``seg``; the other
set is offered as ``seg19`` (or ``seg7``), a segmentation task under another name
(``task_types_for``), where its folder exists. So the two-task set of MTAN and LibMTL is
``seg, depth`` and the three-task set this layout can express is ``seg, seg19, depth``
(7 classes + 19 classes + disparity). The three-task Cityscapes of the literature, Auto-Lambda's
(lorenmt/auto-lambda ``create_dataset.py``, class ``CityScapes``: 19-class segmentation + 10-class
part segmentation + disparity at 256 x 512), needs part labels (Cityscapes-Panoptic-Parts
``part_seg/{i}.tif``) and PNG disparities that this layout lacks: it is not supported here.

Items: image ImageNet-normalised float32 (3, H, W); each segmentation int64 (H, W), 255 = ignore
(stored -1, and anything outside the class range); depth float32 (1, H, W), 0 = invalid.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from fusionsearch.data.base import MultiTaskDataset, register_dataset
from fusionsearch.data.transforms import (
    IGNORE_INDEX,
    DataError,
    MissingDataError,
    as_hw,
    check_root,
    check_shape,
    clean_depth,
    finish_item,
)
from fusionsearch.errors import ArgumentError
from fusionsearch.tasks.labels import LabelKind, get_label_kind

__all__ = ["Cityscapes", "CLASSES_7", "CLASSES_19", "CLASS_SETS"]

# The 19 are the benchmark's train ids (cityscapesScripts labels.py). MTAN does not publish its
# pre-processing (its README: lost in a crash): the 7 are taken to be Cityscapes' categories without
# "void", in labels.py's category-id order - names for reports only, the stored indices are kept.
CLASSES_7 = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
CLASSES_19 = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CLASS_SETS: dict[int, tuple[str, ...]] = {7: CLASSES_7, 19: CLASSES_19}
_SPLITS = ("train", "val")


def _check_classes(classes: object) -> int:
    if isinstance(classes, bool) or classes not in CLASS_SETS:
        raise ArgumentError(f"Cityscapes classes must be 7 or 19, got {classes!r}")
    return int(classes)


def _other(classes: int) -> int:
    return 19 if classes == 7 else 7


def _label_dir(split_dir: Path, classes: int) -> Path:
    """``label_{classes}``; for 7 classes LibMTL's ``label`` where ``label_7`` is absent."""
    folder = split_dir / f"label_{classes}"
    if classes == 7 and not folder.is_dir() and (split_dir / "label").is_dir():
        return split_dir / "label"
    return folder


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {str(path)!r}: {e}") from e


def _seg_tensor(label: np.ndarray, num_classes: int, path: Path) -> Tensor:
    """Stored classes -> int64 0..num_classes-1; -1 (and NaN, or anything out of range) -> 255."""
    if not (np.issubdtype(label.dtype, np.floating) or np.issubdtype(label.dtype, np.integer)):
        raise DataError(f"Cityscapes label {str(path)!r} has dtype {label.dtype}, expected numbers")
    lab = np.rint(label.astype(np.float64))
    keep = np.isfinite(lab) & (lab >= 0) & (lab < num_classes)
    return torch.from_numpy(np.where(keep, lab, IGNORE_INDEX).astype(np.int64))


@register_dataset("cityscapes")
class Cityscapes(MultiTaskDataset):
    """Cityscapes seg + disparity (+ the other class set) from MTAN's ``{i}.npy`` layout; see the module docstring.

    ``classes`` (7 or 19) is the set read as ``seg``; ``size`` resizes every item to (H, W) (None:
    native, 128 x 256 in the usual release); ``augment`` (default: on for the train split) flips
    left-right with p = 0.5 from torch's global RNG, which the training loader seeds per item;
    ``length`` keeps the first N images of the split (by number).
    """

    tasks: dict[str, int] = {"seg": 7, "depth": 1, "seg19": 19}  # per instance: by classes and folders
    # the second class set is a segmentation under another name: its kind is the index map's
    label_kinds: ClassVar[dict[str, LabelKind]] = {
        "seg7": get_label_kind("index_map"),
        "seg19": get_label_kind("index_map"),
    }

    @staticmethod
    def tasks_for(classes: int = 7, **_: object) -> dict[str, int]:
        """The labels the layout provides, without reading files (recipes build nets from this)."""
        n = _check_classes(classes)
        return {"seg": n, "depth": 1, f"seg{_other(n)}": _other(n)}

    @staticmethod
    def task_types_for(classes: int = 7, **_: object) -> dict[str, str]:
        """The second class set is a segmentation task: ``{"seg19": "seg"}`` (or ``seg7``)."""
        return {f"seg{_other(_check_classes(classes))}": "seg"}

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        classes: int = 7,
        size: int | tuple[int, int] | None = None,
        augment: bool | None = None,
        length: int | None = None,
    ) -> None:
        self.root = check_root(root, "Cityscapes")
        if split not in _SPLITS:
            raise ArgumentError(f"Cityscapes split must be train or val, got {split!r}")
        if length is not None and length < 1:
            raise ArgumentError(f"length must be positive, got {length}")
        self.num_classes = _check_classes(classes)
        self.classes = CLASS_SETS[self.num_classes]
        self.split = split
        split_dir = self.root / split
        self.folders = self._folders(split_dir)
        stems = self._stems(split_dir / "image")
        self.stems = stems[:length] if length is not None else stems
        self._check_files()
        other = _other(self.num_classes)
        self.tasks = {"seg": self.num_classes, "depth": 1}
        if f"seg{other}" in self.folders:  # the other class set, where its folder exists
            self.tasks[f"seg{other}"] = other
        self.size = as_hw(size)
        self.augment = split == "train" if augment is None else bool(augment)

    def _folders(self, split_dir: Path) -> dict[str, Path]:
        """Task -> label folder: ``seg`` and ``depth`` must exist, the other class set where it does."""
        image_dir = split_dir / "image"
        if not image_dir.is_dir():
            raise MissingDataError(f"Cityscapes: split folder {str(image_dir)!r} does not exist")
        folders = {"seg": _label_dir(split_dir, self.num_classes), "depth": split_dir / "depth"}
        for task, folder in folders.items():
            if not folder.is_dir():
                raise MissingDataError(f"Cityscapes: {task} folder {str(folder)!r} does not exist")
        other = _other(self.num_classes)
        if _label_dir(split_dir, other).is_dir():
            folders[f"seg{other}"] = _label_dir(split_dir, other)
        return folders

    @staticmethod
    def _stems(image_dir: Path) -> list[int]:
        stems = sorted(int(p.stem) for p in image_dir.glob("*.npy") if p.stem.isdigit())
        if not stems:
            raise MissingDataError(f"Cityscapes: {str(image_dir)!r} holds no {{i}}.npy image files")
        return stems

    def _check_files(self) -> None:
        for i in self.stems:
            for task, folder in self.folders.items():
                label = folder / f"{i}.npy"
                if not label.is_file():
                    image = self.root / self.split / "image" / f"{i}.npy"
                    raise MissingDataError(
                        f"Cityscapes image {str(image)!r} has no {task} label: {str(label)!r} does not exist"
                    )

    def __len__(self) -> int:
        return len(self.stems)

    def item_ids(self) -> list[str]:
        """Each image's file stem, ``"0"``, ``"1"``, ... (``data.labelled`` lists them)."""
        return [str(i) for i in self.stems]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self.stems):
            raise IndexError(f"index {index} out of range for {len(self.stems)} Cityscapes images")
        item = self.load(index)
        return finish_item(item, self.size, self.augment, self.label_kinds)

    def load(self, index: int) -> dict[str, Tensor]:
        """Image ``index`` at its native size, image still in [0, 1]: no resize, flip or normalisation."""
        stem = f"{self.stems[index]}.npy"
        path = self.root / self.split / "image" / stem
        image = _load(path)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise DataError(f"Cityscapes image {str(path)!r} has shape {image.shape}, expected (H, W, 3)")
        image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        hw = image.shape[:2]
        item = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}
        for task, folder in self.folders.items():
            path = folder / stem
            arr = check_shape(_load(path), (hw, (*hw, 1)), path, f"Cityscapes {task} label").reshape(hw)
            if task == "depth":
                item[task] = clean_depth(torch.from_numpy(arr.astype(np.float32))[None])
            else:
                item[task] = _seg_tensor(arr, self.tasks[task], path)
        return item
