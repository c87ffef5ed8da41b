"""``folder``: a user's own folder of images and labels as a data set, with no code.

The layout is documented in ``data.folder_layout``; ``scan`` reads it (cached per folder while its
files stay as they are) and ``FolderData`` serves its items: the image and, for every task the
folder labels, the label decoded by its kind, or the kind's "no label here" value where the image
has no file or cell for the task. A malformed folder is refused when the data set (or a recipe
naming it) is built, with its first problem in one line; ``fusionsearch data check PATH`` lists them all.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fusionsearch.data.base import MultiTaskDataset, register_dataset
from fusionsearch.data.folder_boxes import box_counts, box_tasks, is_boxes
from fusionsearch.data.folder_csv import labels_csv
from fusionsearch.data.folder_layout import (
    FolderLayout,
    FolderTask,
    count_classes,
    dense_tasks,
    find_images,
    read_dense,
    split_ids,
    tasks_yaml,
)
from fusionsearch.data.transforms import (
    IGNORE_INDEX,
    DataError,
    as_hw,
    check_root,
    clean_depth,
    clean_normals,
    finish_item,
)
from fusionsearch.errors import ArgumentError
from fusionsearch.tasks.boxes import empty_boxes, make_boxes
from fusionsearch.tasks.labels import ClassLabel, IndexMap, LabelKind, MultiLabel, ScalarMap, VectorMap

__all__ = ["FolderData", "scan", "load_layout", "read_image", "read_label"]


def scan(root: str | Path) -> FolderLayout:
    """The folder's layout with its problems and notes: reads no image, and labels only to count
    the classes nobody declared. MissingDataError for a missing folder, DataError without images."""
    layout = FolderLayout(check_root(root, "folder data set").resolve())
    find_images(layout)
    declared = tasks_yaml(layout)
    dense_tasks(layout, declared)
    labels_csv(layout, declared)
    box_tasks(layout, declared)
    for name in declared:
        if name not in layout.tasks:
            layout.problems.append(f"tasks.yaml declares {name!r}, but no folder {name}/ nor labels.csv column has it")
    for task in layout.tasks.values():
        count_classes(layout, task)
    split_ids(layout)
    if not layout.tasks:
        layout.problems.append("no task found: no task folder and no labels.csv column names a task")
    return layout


def _stamp(root: Path) -> tuple[Any, ...]:
    """What changes when the folder's listing or side files change (their modification times)."""
    paths = [root, root / "images", root / "labels.csv", root / "tasks.yaml", root / "splits"]
    paths += [p for p in root.iterdir() if p.is_dir() or p.suffix == ".json"] if root.is_dir() else []
    return tuple((str(p), p.stat().st_mtime_ns) for p in paths if p.exists())


@functools.lru_cache(maxsize=8)
def _cached_scan(root: str, stamp: tuple[Any, ...]) -> FolderLayout:
    return scan(root)


def load_layout(root: str | Path) -> FolderLayout:
    """``scan``, once per folder state, refusing a folder with problems (the first, in one line)."""
    path = check_root(root, "folder data set").resolve()
    layout = _cached_scan(str(path), _stamp(path))
    layout.raise_problems()
    return layout


def read_image(path: Path) -> Tensor:
    """(3, H, W) float RGB in [0, 1]; DataError naming an unreadable file."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {str(path)!r}: {' '.join(str(e).split())}") from None
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _as_hw(arr: np.ndarray, hw: tuple[int, int], channels: int, path: Path) -> np.ndarray:
    """``arr`` as (channels, H, W): (H, W), (H, W, C) and (C, H, W) are accepted."""
    if arr.ndim == 2 and channels == 1:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] == channels and arr.shape[:2] == hw:
        arr = arr.transpose(2, 0, 1)
    if arr.shape != (channels, *hw):
        raise DataError(
            f"label {str(path)!r} has shape {arr.shape}, its image is {hw[0]}x{hw[1]}: expected"
            f" {'(H, W)' if channels == 1 else f'(H, W, {channels})'} at the image's size"
        )
    return arr


def _index_map(task: FolderTask, arr: np.ndarray, path: Path) -> Tensor:
    lab = arr.astype(np.int64)
    ignore = (lab < 0) | (lab == IGNORE_INDEX)
    if task.ignore_index is not None:
        ignore |= lab == task.ignore_index
    bad = ~ignore & (lab >= task.size)
    if bad.any():
        raise DataError(f"label {str(path)!r} holds class {int(lab[bad].max())}, out of range for {task.size} classes")
    return torch.from_numpy(np.where(ignore, IGNORE_INDEX, lab)[0])


def _class_pixels(task: FolderTask, arr: np.ndarray) -> np.ndarray:
    """Pixels per class (``task.size`` of them) of one stored index map, without its ignored values."""
    lab = arr.astype(np.int64).ravel()
    keep = (lab >= 0) & (lab != IGNORE_INDEX) & (lab < task.size)
    if task.ignore_index is not None:
        keep &= lab != task.ignore_index
    return np.bincount(lab[keep], minlength=task.size)


def read_label(task: FolderTask, path: Path, hw: tuple[int, int]) -> Tensor:
    """One dense label file decoded by its kind at the image's size ``hw``."""
    arr = read_dense(task, path)
    png = path.suffix.lower() == ".png"
    if isinstance(task.kind, IndexMap):
        return _index_map(task, _as_hw(arr, hw, 1, path), path)
    if isinstance(task.kind, ScalarMap):
        values = _as_hw(arr, hw, 1, path).astype(np.float32) * (task.scale if png else 1.0)
        return clean_depth(torch.from_numpy(values))
    values = _as_hw(arr, hw, task.size, path).astype(np.float32)
    if png:  # 8-bit RGB: n = v / 127.5 - 1, and (0, 0, 0), no unit vector's code, is "no label"
        blank = (values == 0).all(0, keepdims=True)
        values = np.where(blank, 0.0, values / 127.5 - 1.0)
    return clean_normals(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)))


def _blank(kind: LabelKind, size: int, hw: tuple[int, int]) -> Tensor:
    """The kind's "no label here" value, shaped as this task's labels."""
    template = {
        IndexMap: lambda: torch.zeros(hw, dtype=torch.int64),
        ScalarMap: lambda: torch.zeros(1, *hw),
        VectorMap: lambda: torch.zeros(size, *hw),
        MultiLabel: lambda: torch.zeros(size),
    }.get(type(kind), lambda: torch.tensor(0, dtype=torch.int64))()
    return kind.unlabelled_like(template)


def _boxes(task: FolderTask, i: str) -> dict[str, Tensor]:
    """Image ``i``'s boxes for a box task: its objects, or no label where it has no annotation."""
    if i not in task.values:
        return empty_boxes(task.n_attrs, labelled=False)
    boxes, labels, attrs, difficult = task.values[i]
    if attrs is None and task.n_attrs:  # boxes given without attributes: unlabelled for them
        attrs = np.full((len(boxes), task.n_attrs), -1.0, dtype=np.float32)
    return make_boxes(boxes, labels, attrs, difficult, num_attrs=task.n_attrs)


@register_dataset("folder")
class FolderData(MultiTaskDataset):
    """A user's own data: a folder of images with a folder or a CSV of labels per task.

    A user's own data: ``PATH/images``, one folder per dense task, ``labels.csv`` for per-image
    tasks, optional ``splits/`` and ``tasks.yaml`` (``data.folder_layout`` documents it).

    ``size`` resizes every item (default 128, the recipes' default); ``augment`` (default: on for the
    train split) flips left-right with p = 0.5 using torch's global RNG, which the training loader
    seeds per item; ``length`` keeps the split's first N ids. Item ids are the file stems."""

    @staticmethod
    def tasks_for(root: str | Path, **_: object) -> dict[str, int]:
        """Each task's outputs (classes, channels, attributes), from the layout (no image is read)."""
        return {name: t.size for name, t in load_layout(root).tasks.items()}

    @staticmethod
    def task_types_for(root: str | Path, **_: object) -> dict[str, str]:
        """The registered type of each task whose name is not one (``tasks.yaml``'s ``task``)."""
        return {name: t.type for name, t in load_layout(root).tasks.items() if t.type != name}

    @staticmethod
    def notes_for(root: str | Path, **_: object) -> list[str]:
        """What a person should know of the folder before a study: class counts read from the
        labels, the split made without ``splits/``, folders and columns that name no task."""
        return list(load_layout(root).notes)

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        size: int | tuple[int, int] | None = 128,
        augment: bool | None = None,
        length: int | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise ArgumentError(f"split must be train or val, got {split!r}")
        if length is not None and length < 1:
            raise ArgumentError(f"length must be positive, got {length}")
        layout = load_layout(root)
        self.root, self.split = layout.root, split
        self.ids = layout.splits[split][:length]
        if not self.ids:
            raise DataError(f"the {split} split of {str(self.root)!r} holds no image (splits/{split}.txt)")
        self.images = {i: layout.images[i] for i in self.ids}
        self.labels = layout.tasks
        self.tasks = {name: t.size for name, t in layout.tasks.items()}
        self.label_kinds = {name: t.kind for name, t in layout.tasks.items()}
        self.size = as_hw(size)
        self.augment = split == "train" if augment is None else bool(augment)

    def __len__(self) -> int:
        return len(self.ids)

    def item_ids(self) -> list[str]:
        return list(self.ids)

    def labelled_indices(self, task: str) -> list[int]:
        """The indices of this split's images that carry ``task``'s label (a file, a cell, a box
        list): what per-task batches draw from (``train.batches``)."""
        have = self.labels[task].labelled_ids()
        return [k for k, i in enumerate(self.ids) if i in have]

    def category_counts(self, task: str) -> dict[str, int]:
        """Training label counts per category of ``task`` over this split's images (index as a
        string): an index map's pixels per class at the files' native size (one pass over its
        label files, not the images), a multi-label task's positives per attribute and a class
        task's images per class (both from the layout's stored values, no file read), a box task's
        objects per class or positives per attribute (``folder_boxes.box_counts``)."""
        t = self.labels[task]
        if is_boxes(t):
            return box_counts(t, self.ids)
        counts = {str(c): 0 for c in range(t.size)}
        if isinstance(t.kind, IndexMap):
            for i in self.ids:
                path = t.files.get(i)
                if path is not None:
                    for c, n in enumerate(_class_pixels(t, read_dense(t, path)).tolist()):
                        counts[str(c)] += int(n)
        elif isinstance(t.kind, MultiLabel):
            values = [np.asarray(t.values[i]) for i in self.ids if i in t.values]
            for a, n in enumerate((np.stack(values) == 1).sum(0).tolist() if values else []):
                counts[str(a)] = int(n)
        elif isinstance(t.kind, ClassLabel):
            for i in self.ids:
                v = int(t.values.get(i, -1))
                if 0 <= v < t.size:
                    counts[str(v)] += 1
        return counts

    def load(self, index: int) -> dict[str, Tensor]:
        """Item ``index`` at its native size, image in [0, 1]: no resize, flip or normalisation."""
        i = self.ids[index]
        image = read_image(self.images[i])
        hw = (int(image.shape[1]), int(image.shape[2]))
        item: dict[str, Any] = {"image": image}
        for name, task in self.labels.items():
            if is_boxes(task):
                item[name] = _boxes(task, i)
            elif task.dense:
                path = task.files.get(i)
                item[name] = read_label(task, path, hw) if path is not None else _blank(task.kind, task.size, hw)
            elif i in task.values:
                dtype = torch.float32 if isinstance(task.kind, MultiLabel) else torch.int64
                item[name] = torch.as_tensor(task.values[i], dtype=dtype)
            else:
                item[name] = _blank(task.kind, task.size, hw)
        return item

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self.ids):
            raise IndexError(f"index {index} out of range for {len(self.ids)} images")
        item = self.load(index)
        return finish_item(item, self.size, self.augment, self.label_kinds)
