"""The ``folder`` data set's box tasks (``det``, ``box_attr``, any task of the ``boxes`` kind), in
either of two formats, read whole when the folder is scanned (they are text)::

    PATH/<task>/<id>.json   one file per image: {"boxes": [[x1, y1, x2, y2], ...], "labels": [...],
                            "attrs": [[1, 0, -1, ...], ...]}  (attrs optional; -1 = unlabelled)
    PATH/<task>.json        COCO: "images" [{"id", "file_name"}], "annotations" [{"image_id",
                            "bbox": [x, y, w, h], "category_id", "attributes": [...], "iscrowd"}],
                            "categories" [{"id", "name"}]

Boxes are pixels of the image as stored, xyxy with x1 < x2 and y1 < y2 (COCO's [x, y, w, h] becomes
[x, y, x + w, y + h]). Labels are classes 1..C (0 is the background) or class names; COCO's
category ids, which need not be contiguous, become 1..C in ``tasks.yaml``'s ``classes`` order,
else in increasing id. A COCO ``iscrowd`` object is ``difficult`` (neither a positive nor a false
detection). An image with no file (no entry in COCO's ``images``) is unlabelled for the task; one
with a file (an entry) and no box is a labelled negative. ``tasks.yaml`` may give ``classes`` and
``attributes`` (names or counts) and ``source: OTHER`` to read another task's boxes (``det`` and
``box_attr`` on one set of annotations). A task's size is its class count for ``det``, its
attribute count for ``box_attr``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fusionsearch.data.folder_layout import FolderLayout, FolderTask, _rel, is_box_type, make_task, read_text
from fusionsearch.tasks.boxes import Boxes

__all__ = ["is_boxes", "read_box_folder", "read_coco", "finish_box_task", "box_tasks", "box_counts"]


def is_boxes(task: FolderTask) -> bool:
    return isinstance(task.kind, Boxes)


def box_counts(task: FolderTask, ids: list[str]) -> dict[str, int]:
    """Training label counts of a box task over ``ids``, keyed as its ``per_category``: a
    ``box_attr`` task's positives per attribute ("0".."A-1"), else objects per class ("1".."C", 0
    being the background), every category present with 0 where nothing labels it."""
    attrs = task.type == "box_attr"
    keys = range(task.n_attrs) if attrs else range(1, task.n_classes + 1)
    counts = {str(c): 0 for c in keys}
    for i in ids:
        if i not in task.values:
            continue
        _, labels, rows, _ = task.values[i]
        found = (rows == 1).sum(0).tolist() if attrs and rows is not None and len(rows) else []
        pairs = enumerate(found) if attrs else ((int(c), 1) for c in labels.tolist())
        for c, n in pairs:
            if str(c) in counts:
                counts[str(c)] += int(n)
    return counts


def _load_json(layout: FolderLayout, path: Path) -> Any:
    """A JSON file through ``read_text`` (a FIFO or device is refused, not read for ever)."""
    text = read_text(layout, path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        layout.problems.append(f"{_rel(layout, path)}: not readable JSON ({' '.join(str(e).split())})")
        return None


def _label(task: FolderTask, value: Any, where: str, problems: list[str]) -> int:
    if isinstance(value, str) and value in task.names:
        return task.names.index(value) + 1
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    problems.append(f"{where}: label {value!r} is neither a class 1..C nor one of tasks.yaml's classes")
    return -1


def _box(value: Any, where: str, problems: list[str]) -> list[float] | None:
    ok = isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value)
    if not ok or not (value[0] < value[2] and value[1] < value[3]):
        problems.append(f"{where}: box {value!r} is not [x1, y1, x2, y2] with x1 < x2 and y1 < y2")
        return None
    return [float(v) for v in value]


def _attrs(value: Any, where: str, problems: list[str]) -> list[float] | None:
    if not isinstance(value, list) or any(v not in (0, 1, -1) or isinstance(v, bool) for v in value):
        problems.append(f"{where}: attributes {value!r} are not a list of 1, 0 or -1")
        return None
    return [float(v) for v in value]


def _store(task: FolderTask, i: str, objs: list[tuple[list[float], int, list[float] | None, bool]]) -> None:
    """One image's objects as arrays: (boxes, labels, attrs or None, difficult)."""
    boxes = np.array([o[0] for o in objs], dtype=np.float32).reshape(-1, 4)
    labels = np.array([o[1] for o in objs], dtype=np.int64)
    attrs = [o[2] for o in objs]
    rows = None if not attrs or any(a is None for a in attrs) else np.array(attrs, dtype=np.float32)
    task.values[i] = (boxes, labels, rows, np.array([o[3] for o in objs], dtype=bool))


def read_box_folder(layout: FolderLayout, task: FolderTask, folder: Path) -> None:
    """``PATH/<task>/<id>.json``, one file per image; every bad file or object is a problem."""
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() != ".json":
            if not path.name.startswith("."):
                layout.notes.append(f"{_rel(layout, path)}: not a .json box file: ignored")
            continue
        where = _rel(layout, path)
        if path.stem not in layout.images:
            layout.problems.append(f"orphan label {where}: no image with id {path.stem!r}")
            continue
        data = _load_json(layout, path)
        if data is None:
            continue
        boxes, labels, attrs = (data.get(k) if isinstance(data, dict) else None for k in ("boxes", "labels", "attrs"))
        if not isinstance(boxes, list) or not isinstance(labels, list) or len(boxes) != len(labels):
            layout.problems.append(f"{where}: needs lists 'boxes' and 'labels' of one length")
            continue
        if attrs is not None and (not isinstance(attrs, list) or len(attrs) != len(boxes)):
            layout.problems.append(f"{where}: 'attrs' must hold one list per box")
            continue
        objs = []
        for k, (b, lab) in enumerate(zip(boxes, labels)):
            box = _box(b, f"{where} box {k}", layout.problems)
            row = _attrs(attrs[k], f"{where} box {k}", layout.problems) if attrs is not None else None
            objs.append((box or [0.0] * 4, _label(task, lab, f"{where} box {k}", layout.problems), row, False))
        _store(task, path.stem, objs)


def read_coco(layout: FolderLayout, task: FolderTask, path: Path) -> None:
    """``PATH/<task>.json`` in COCO's format; every bad entry is a problem naming the file."""
    data = _load_json(layout, path)
    where = _rel(layout, path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        if data is not None:
            layout.problems.append(f"{where}: COCO needs lists 'images' and 'annotations'")
        return
    cats = {c["id"]: str(c.get("name", c["id"])) for c in data.get("categories") or [] if isinstance(c, dict)}
    if not task.names:
        task.names = tuple(cats[k] for k in sorted(cats))
    index = {k: task.names.index(n) + 1 for k, n in cats.items() if n in task.names}
    ids: dict[Any, str] = {}
    for im in data["images"]:
        stem = Path(str(im.get("file_name", ""))).stem if isinstance(im, dict) else ""
        if stem not in layout.images:
            layout.problems.append(f"{where}: image {im!r}: no image with id {stem!r} in images/")
            continue
        ids[im.get("id")] = stem
    objs: dict[str, list[tuple[list[float], int, list[float] | None, bool]]] = {s: [] for s in ids.values()}
    for n, ann in enumerate(data["annotations"]):
        at = f"{where} annotation {n}"
        if not isinstance(ann, dict) or ann.get("image_id") not in ids or ann.get("category_id") not in index:
            layout.problems.append(f"{at}: needs an image_id of 'images' and a category_id of 'categories'")
            continue
        bbox = ann.get("bbox")
        ok = isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
        xyxy = [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]] if ok and bbox else bbox
        box = _box(xyxy, f"{at} (bbox [x, y, w, h] {bbox!r})", layout.problems)
        row = _attrs(ann["attributes"], at, layout.problems) if "attributes" in ann else None
        if box is not None:
            objs[ids[ann["image_id"]]].append((box, index[ann["category_id"]], row, bool(ann.get("iscrowd", 0))))
    for stem, found in objs.items():
        _store(task, stem, found)


def finish_box_task(layout: FolderLayout, task: FolderTask, spec: dict[str, Any]) -> None:
    """Sizes from the declarations or the labels (noted), and the attribute rows checked."""
    widths = {len(v[2][0]) for v in task.values.values() if v[2] is not None and len(v[2])}
    declared = spec.get("attributes")
    n_attrs = len(declared) if isinstance(declared, list) else declared if isinstance(declared, int) else None
    if len(widths) > 1 or (n_attrs is not None and widths and widths != {n_attrs}):
        layout.problems.append(f"{task.name}: boxes carry {sorted(widths)} attributes; give every box the same number")
    task.attr_names = tuple(declared) if isinstance(declared, list) else ()
    task.n_attrs = n_attrs if n_attrs is not None else (widths.pop() if widths else 0)
    top = max([int(v[1].max()) for v in task.values.values() if len(v[1])] + [len(task.names)])
    if task.names and top > len(task.names):
        layout.problems.append(f"{task.name}: class {top} is beyond the {len(task.names)} classes declared")
    task.n_classes = max(top, 1)
    if not task.names and not isinstance(spec.get("classes"), int):
        task.read_from_labels = True
        layout.notes.append(f"{task.name}: {task.n_classes} box classes read from the labels (declare classes)")
    if task.type == "box_attr" and not task.n_attrs:
        layout.problems.append(f"{task.name}: a box_attr task needs attributes on its boxes")
    task.size = task.n_attrs if task.type == "box_attr" else task.n_classes


def box_tasks(layout: FolderLayout, declared: dict[str, dict[str, Any]]) -> None:
    """The box tasks: folders ``PATH/<task>/`` of per-image files, COCO files ``PATH/<task>.json``,
    the tasks that read another's boxes (``source``), then every box task's sizes."""
    for folder in sorted(p for p in layout.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        spec = declared.get(folder.name, {})
        if is_box_type(str(spec.get("task", folder.name))):
            task = make_task(layout, folder.name, spec)
            if task is not None:
                read_box_folder(layout, task, folder)
                layout.tasks[folder.name] = task
    for path in sorted(layout.root.glob("*.json")):
        name = path.stem
        if name not in declared and not is_box_type(name):
            layout.notes.append(f"{path.name}: not a box task declared in tasks.yaml: ignored")
            continue
        task = make_task(layout, name, declared.get(name, {}))
        if task is None or not is_boxes(task):
            if task is not None:
                layout.problems.append(f"{path.name}: task {name!r} does not take boxes")
            continue
        if name in layout.tasks:
            layout.problems.append(f"{name}: boxes both in {name}/ and {path.name}: keep one")
            continue
        read_coco(layout, task, path)
        layout.tasks[name] = task
    for name, spec in declared.items():
        source = spec.get("source")
        if source is None or name in layout.tasks:
            continue
        task = make_task(layout, name, spec)
        origin = layout.tasks.get(str(source))
        if task is None or origin is None or not is_boxes(origin) or not is_boxes(task):
            layout.problems.append(f"tasks.yaml: {name}: source {source!r} is not a box task of the folder")
            continue
        task.values, task.names = origin.values, task.names or origin.names
        task.source = origin.source or origin.name
        layout.tasks[name] = task
    for task in layout.tasks.values():
        if is_boxes(task):
            finish_box_task(layout, task, declared.get(task.name, {}))
