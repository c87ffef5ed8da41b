"""The ``folder`` data set's layout: what a user's folder holds, read once without decoding images.

A user's own data, with no code::

    PATH/images/<id>.jpg|png|...   RGB images, any size (one file per id)
    PATH/<task>/<id>.png|npy       one folder per dense task, named after the task
    PATH/<task>/<id>.json          boxes (det, box_attr): one file per image, or PATH/<task>.json in
                                   COCO's format (``data.folder_boxes`` documents both)
    PATH/labels.csv                id,<task>,<task>.<attribute>,... per-image labels (empty = unlabelled)
    PATH/splits/train.txt, val.txt ids, one per line (without them: a seeded 90/10 split)
    PATH/tasks.yaml                optional: per task, the registered task it is, classes, encodings

A folder or column whose name is a registered task is that task; ``tasks.yaml`` declares any other
name (``quality: {task: cls}``), a class count or class names, and how a PNG encodes a depth or a
normal. An image without a file or a cell for a task is unlabelled for it. ``scan`` reads the
listing, the CSV, the split lists and ``tasks.yaml`` (and, for a class count nobody declared, the
labels), and records every problem as one line naming the file (and line), so that ``data check``
can list them all and a study refuses the folder before anything is stored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusionsearch.data.transforms import MAX_LIST_BYTES, DataError
from fusionsearch.paths import read_input_text
from fusionsearch.tasks.boxes import BOXES, Boxes
from fusionsearch.tasks.labels import ClassLabel, IndexMap, LabelKind, MultiLabel, ScalarMap, VectorMap
from fusionsearch.tasks.task import TASKS

__all__ = [
    "IMAGE_EXTS",
    "FolderTask",
    "FolderLayout",
    "tasks_yaml",
    "find_images",
    "dense_tasks",
    "split_ids",
    "count_classes",
    "read_dense",
    "TASK_FIELDS",
    "make_task",
    "read_text",
    "is_box_type",
    "BOX_TYPES",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_EXTS = (".png", ".npy")
SPLITS = ("train", "val")
TASK_FIELDS = {"task", "classes", "encoding", "scale", "ignore_index", "channels", "attributes", "source"}
BOX_TYPES = ("det", "box_attr")  # box tasks the folder knows by name, registered or not yet
ENCODINGS = {  # kind -> the PNG encodings it reads (.npy files hold the values themselves)
    "index_map": ("index",),
    "scalar_map": ("png16", "png8"),
    "vector_map": ("rgb8",),
}
_DENSE = (IndexMap, ScalarMap, VectorMap)
_PER_IMAGE = (ClassLabel, MultiLabel)
VAL_SHARE = 0.1


@dataclass
class FolderTask:
    """One task of a folder: where its labels are, its registered type and kind, its outputs."""

    name: str
    type: str
    kind: LabelKind
    size: int = 0  # outputs: classes, channels, attributes
    read_from_labels: bool = False  # the size was not declared: the loader counted it
    names: tuple[str, ...] = ()  # class names (a class column of names) or attribute names
    encoding: str = ""
    scale: float = 1.0
    ignore_index: int | None = None  # the stored value that means "no label" (an index map)
    files: dict[str, Path] = field(default_factory=dict)  # a dense task: id -> label file
    values: dict[str, Any] = field(default_factory=dict)  # a per-image task: id -> int or (A,) array
    n_classes: int = 0  # a box task: classes 1..C
    n_attrs: int = 0  # a box task: attributes per box
    attr_names: tuple[str, ...] = ()  # a box task: attribute names, when declared
    source: str = ""  # a box task that reads another's boxes (``source:``): the task whose files hold them

    @property
    def dense(self) -> bool:
        return isinstance(self.kind, _DENSE)

    def labelled_ids(self) -> set[str]:
        if self.dense:
            return set(self.files)
        if isinstance(self.kind, Boxes):
            return set(self.values)
        if isinstance(self.kind, MultiLabel):
            return {i for i, v in self.values.items() if (np.asarray(v) >= 0).any()}
        return {i for i, v in self.values.items() if v >= 0}


@dataclass
class FolderLayout:
    """What ``scan`` found: images by id, tasks, splits, and the problems and notes to show."""

    root: Path
    images: dict[str, Path] = field(default_factory=dict)
    tasks: dict[str, FolderTask] = field(default_factory=dict)
    splits: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def raise_problems(self) -> None:
        """DataError with the first problem, and how to see them all."""
        if self.problems:
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise DataError(
                f"{self.problems[0]}{more}: `fusionsearch data check {self.root}` lists every problem of the folder"
            )


def _rel(layout: FolderLayout, path: Path) -> str:
    try:
        return str(path.relative_to(layout.root))
    except ValueError:
        return str(path)


MAX_SIDE_FILE_BYTES = 1 << 20  # tasks.yaml is a page of settings, not data


def read_text(layout: FolderLayout, path: Path, limit: int = MAX_LIST_BYTES) -> str | None:
    """A text file of at most ``limit`` bytes, or None with a problem naming it (a FIFO or device,
    a file over the limit, a binary file)."""
    try:
        return read_input_text(path, _rel(layout, path), limit, DataError)
    except DataError as e:
        layout.problems.append(str(e))
        return None


def tasks_yaml(layout: FolderLayout) -> dict[str, dict[str, Any]]:
    """``tasks.yaml`` as task -> fields; each bad entry is a problem naming it."""
    import yaml

    path = layout.root / "tasks.yaml"
    if not path.exists():
        return {}
    text = read_text(layout, path, MAX_SIDE_FILE_BYTES)
    if text is None:
        return {}
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        layout.problems.append(f"tasks.yaml: not valid YAML ({' '.join(str(e).split())})")
        return {}
    if not isinstance(data, dict):
        layout.problems.append(f"tasks.yaml: must map task names to their fields, got a {type(data).__name__}")
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, spec in data.items():
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            layout.problems.append(f"tasks.yaml: {name}: must be a mapping of fields, got {spec!r}")
            continue
        unknown = sorted(set(spec) - TASK_FIELDS)
        if unknown:
            layout.problems.append(f"tasks.yaml: {name}: unknown field(s) {unknown}; known: {sorted(TASK_FIELDS)}")
            continue
        typ = str(spec.get("task", name))
        if typ not in TASKS and typ not in BOX_TYPES:
            layout.problems.append(f"tasks.yaml: {name}: {typ!r} is not a registered task ({', '.join(sorted(TASKS))})")
            continue
        out[str(name)] = spec
    return out


def is_box_type(typ: str) -> bool:
    """Whether task type ``typ`` takes boxes: ``det``, ``box_attr``, or a registered ``boxes`` task."""
    return typ in BOX_TYPES if typ not in TASKS else isinstance(TASKS[typ].label, Boxes)


def make_task(layout: FolderLayout, name: str, spec: dict[str, Any]) -> FolderTask | None:
    """A task from its name and its ``tasks.yaml`` fields; None (and a problem) if unusable."""
    typ = str(spec.get("task", name))
    kind = BOXES if typ in BOX_TYPES and typ not in TASKS else TASKS[typ].label
    where = f"tasks.yaml: {name}" if spec else name
    if not isinstance(kind, (*_DENSE, *_PER_IMAGE, Boxes)):
        layout.problems.append(f"{where}: the folder data set reads no {kind} labels (task {typ!r})")
        return None
    task = FolderTask(name, typ, IndexMap() if isinstance(kind, IndexMap) else kind)
    classes = spec.get("classes", spec.get("channels"))
    if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
        task.names, task.size = tuple(classes), len(classes)
    elif isinstance(classes, int) and not isinstance(classes, bool) and classes >= 1:
        task.size = classes
    elif classes is not None:
        layout.problems.append(f"{where}: classes must be a count >= 1 or a list of names, got {classes!r}")
        return None
    encodings = ENCODINGS.get(kind.name, ())
    task.encoding = str(spec.get("encoding", encodings[0] if encodings else ""))
    if task.encoding and task.encoding not in encodings:
        layout.problems.append(f"{where}: encoding {task.encoding!r}; a {kind} reads {', '.join(encodings)}")
        return None
    scale, ignore = spec.get("scale", 1.0), spec.get("ignore_index")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
        layout.problems.append(f"{where}: scale must be a number > 0, got {scale!r}")
        return None
    if ignore is not None and (isinstance(ignore, bool) or not isinstance(ignore, int)):
        layout.problems.append(f"{where}: ignore_index must be a whole number, got {ignore!r}")
        return None
    task.scale, task.ignore_index = float(scale), ignore
    return task


def _ids_of(layout: FolderLayout, folder: Path, exts: tuple[str, ...], what: str) -> dict[str, Path]:
    """id -> file in ``folder``; two files with one id (a.jpg and a.png) is a problem."""
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in exts:
            if not path.name.startswith("."):
                layout.notes.append(f"{_rel(layout, path)}: not a {what} file ({', '.join(exts)}): ignored")
            continue
        if path.stem in out:
            layout.problems.append(
                f"id {path.stem!r} has two {what} files: {_rel(layout, out[path.stem])} and {_rel(layout, path)}"
            )
            continue
        out[path.stem] = path
    return out


def find_images(layout: FolderLayout) -> None:
    folder = layout.root / "images"
    if not folder.is_dir():
        raise DataError(f"folder data set {str(layout.root)!r} has no images/ folder (PATH/images/<id>.jpg|png|...)")
    layout.images = _ids_of(layout, folder, IMAGE_EXTS, "image")
    if not layout.images:
        raise DataError(f"{str(folder)!r} holds no images ({', '.join(IMAGE_EXTS)})")


def dense_tasks(layout: FolderLayout, declared: dict[str, dict[str, Any]]) -> None:
    """One task per subfolder that is a registered dense task or declared in tasks.yaml."""
    for folder in sorted(p for p in layout.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = folder.name
        if name in ("images", "splits"):
            continue
        if name not in declared and name not in TASKS and name not in BOX_TYPES:
            layout.notes.append(f"{name}/: not a registered task nor declared in tasks.yaml: ignored")
            continue
        if is_box_type(str(declared.get(name, {}).get("task", name))):
            continue  # read by data.folder_boxes.box_tasks
        task = make_task(layout, name, declared.get(name, {}))
        if task is None:
            continue
        if not task.dense:
            layout.problems.append(f"{name}/: task {task.type!r} has one label per image: give it in labels.csv")
            continue
        task.files = _ids_of(layout, folder, LABEL_EXTS, "label")
        for i, path in task.files.items():
            if i not in layout.images:
                layout.problems.append(f"orphan label {_rel(layout, path)}: no image with id {i!r}")
        layout.tasks[name] = task


def split_ids(layout: FolderLayout) -> None:
    """splits/train.txt and val.txt; a missing one is the rest of the ids; none: a seeded 90/10 split."""
    lists: dict[str, list[str]] = {}
    for split in SPLITS:
        path = layout.root / "splits" / f"{split}.txt"
        if path.exists():
            text = read_text(layout, path)
            ids = [line.split("#", 1)[0].strip() for line in (text or "").splitlines()]
            lists[split] = [i for i in dict.fromkeys(ids) if i]
            for n, line in enumerate((text or "").splitlines(), start=1):
                i = line.split("#", 1)[0].strip()
                if i and i not in layout.images:
                    layout.problems.append(f"splits/{split}.txt line {n}: no image with id {i!r}")
    ids = sorted(layout.images)
    if not lists:
        order = sorted(ids, key=lambda i: hashlib.blake2b(i.encode(), digest_size=8).digest())
        n_val = max(1, round(VAL_SHARE * len(ids))) if len(ids) > 1 else 0
        val = set(order[:n_val])
        lists = {"train": [i for i in ids if i not in val], "val": [i for i in ids if i in val]}
        layout.notes.append(f"no splits/: a seeded 90/10 split of the ids ({len(lists['train'])} / {n_val})")
    for split in SPLITS:
        if split not in lists:
            other = set(lists[SPLITS[1 - SPLITS.index(split)]])
            lists[split] = [i for i in ids if i not in other]
    both = sorted(set(lists["train"]) & set(lists["val"]))
    if both:
        layout.problems.append(f"splits: {len(both)} id(s) in both train.txt and val.txt, e.g. {both[0]!r}")
    layout.splits = {s: [i for i in lists[s] if i in layout.images] for s in SPLITS}


def read_dense(task: FolderTask, path: Path) -> np.ndarray:
    """A dense label file as stored: .npy values, or a PNG's pixels (DataError naming it)."""
    from PIL import Image

    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB") if isinstance(task.kind, VectorMap) else im)
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read label {str(path)!r}: {' '.join(str(e).split())}") from None


def count_classes(layout: FolderLayout, task: FolderTask) -> None:
    """An undeclared size is read from the labels (the loader says so): classes are max + 1."""
    if task.size or isinstance(task.kind, Boxes):
        return
    if task.dense and not isinstance(task.kind, IndexMap):
        task.size = 3 if isinstance(task.kind, VectorMap) else 1
        return
    task.read_from_labels = True
    if task.dense:
        top = -1
        for path in task.files.values():
            try:
                arr = read_dense(task, path)
            except DataError as e:
                layout.problems.append(str(e))
                continue
            keep = arr[(arr != 255) & (arr != (task.ignore_index if task.ignore_index is not None else 255))]
            top = max(top, int(keep.max())) if keep.size else top
    else:
        top = max([int(v) for v in task.values.values()] + [len(task.names) - 1])
    task.size = max(top + 1, 1)
    layout.notes.append(f"{task.name}: {task.size} classes read from the labels (declare classes in tasks.yaml)")
