"""``fusionsearch data check PATH``: a user's folder read whole before any study, every problem one
line naming the file.

``scan`` (``data.folder``) finds what is laid out wrong without decoding anything; this module
decodes every image and every dense label as training would, so that an unreadable file, a label
at another size than its image or a class out of range is found here, not hours into a study, and
counts what a user wants to see first: per task the labelled images, the classes seen and the
ignored share, and per split the images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusionsearch.data.folder import read_image, read_label, scan
from fusionsearch.data.folder_boxes import is_boxes
from fusionsearch.data.folder_layout import FolderLayout, FolderTask
from fusionsearch.data.transforms import IGNORE_INDEX, DataError
from fusionsearch.tasks.labels import IndexMap, MultiLabel

__all__ = ["TaskReport", "FolderReport", "check_folder"]


@dataclass
class TaskReport:
    """What a folder holds for one task."""

    name: str
    type: str
    kind: str
    source: str  # "seg/", "labels.csv", or where a box task's boxes are ("det/", "det.json")
    outputs: int
    read_from_labels: bool
    labelled: dict[str, int] = field(default_factory=dict)  # split -> labelled images
    seen: dict[Any, int] = field(default_factory=dict)  # class (or attribute) -> pixels (images, positives)
    ignored: float | None = None  # share of ignored pixels in the labelled images of an index map
    shapes_ok: int = 0  # dense: label files at their image's size
    objects: dict[str, int] = field(default_factory=dict)  # a box task: split -> objects


@dataclass
class FolderReport:
    """The whole check: per task, per split, and the problems (empty when the folder is fine)."""

    root: Path
    images: int
    splits: dict[str, int]
    tasks: list[TaskReport]
    problems: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _dense_stats(layout: FolderLayout, task: FolderTask, sizes: dict[str, tuple[int, int]], rep: TaskReport) -> None:
    """Decode every label file of a dense task at its image's size; problems name the file."""
    ignored = total = 0
    for i, path in task.files.items():
        if i not in sizes:
            continue  # an orphan, or an unreadable image: already a problem
        try:
            label = read_label(task, path, sizes[i])
        except DataError as e:
            layout.problems.append(str(e))
            continue
        rep.shapes_ok += 1
        if isinstance(task.kind, IndexMap):
            values, counts = np.unique(label.numpy(), return_counts=True)
            for v, c in zip(values.tolist(), counts.tolist()):
                if v != IGNORE_INDEX:
                    rep.seen[v] = rep.seen.get(v, 0) + c
            ignored += int(counts[values == IGNORE_INDEX].sum())
            total += label.numel()
    rep.ignored = ignored / total if isinstance(task.kind, IndexMap) and total else None


def _per_image_stats(task: FolderTask, rep: TaskReport) -> None:
    if isinstance(task.kind, MultiLabel):
        for a, name in enumerate(task.names):
            rep.seen[name] = int(sum(1 for v in task.values.values() if v[a] == 1))
        return
    for v in task.values.values():
        if v >= 0:
            key = task.names[v] if v < len(task.names) else v
            rep.seen[key] = rep.seen.get(key, 0) + 1


def _box_stats(task: FolderTask, splits: dict[str, list[str]], rep: TaskReport) -> None:
    """Objects per split, and per class the objects (``det``) or per attribute the positives."""
    rep.objects = {s: sum(len(task.values[i][1]) for i in ids if i in task.values) for s, ids in splits.items()}
    for _, labels, attrs, _ in task.values.values():
        if task.type == "box_attr" and attrs is not None:
            for a, count in enumerate((attrs == 1).sum(0).tolist()):
                key = task.attr_names[a] if a < len(task.attr_names) else a
                rep.seen[key] = rep.seen.get(key, 0) + int(count)
        elif task.type != "box_attr":
            for label in labels.tolist():
                key = task.names[label - 1] if label - 1 < len(task.names) else label
                rep.seen[key] = rep.seen.get(key, 0) + 1


def _images(layout: FolderLayout, progress: Callable[[Iterable[Any]], Iterable[Any]]) -> dict[str, tuple[int, int]]:
    sizes = {}
    for i, path in progress(list(layout.images.items())):
        try:
            image = read_image(path)
        except DataError as e:
            layout.problems.append(str(e))
            continue
        sizes[i] = (int(image.shape[1]), int(image.shape[2]))
    return sizes


def check_folder(root: str | Path, progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None) -> FolderReport:
    """Scan the folder and decode every image and dense label; ``progress`` wraps the loop over
    images (a progress bar). MissingDataError / DataError only where nothing can be checked (no
    folder, no ``images/``); every other problem is in the report's ``problems``."""
    layout = scan(root)
    sizes = _images(layout, progress or (lambda xs: xs))
    reports = []
    for name, task in layout.tasks.items():
        source = f"{name}/" if task.dense else "labels.csv"
        if is_boxes(task):  # its own boxes or, with ``source:``, those of the task it names
            box_file = layout.root / f"{task.source or name}.json"
            source = box_file.name if box_file.is_file() else f"{task.source or name}/"
        rep = TaskReport(name, task.type, str(task.kind), source, task.size, task.read_from_labels)
        labelled = task.labelled_ids()
        rep.labelled = {s: sum(1 for i in ids if i in labelled) for s, ids in layout.splits.items()}
        if is_boxes(task):
            _box_stats(task, layout.splits, rep)
        elif task.dense:
            _dense_stats(layout, task, sizes, rep)
        else:
            _per_image_stats(task, rep)
        reports.append(rep)
    splits = {s: len(ids) for s, ids in layout.splits.items()}
    return FolderReport(layout.root, len(layout.images), splits, reports, layout.problems, layout.notes)
