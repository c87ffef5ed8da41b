"""The ``folder`` data set's ``labels.csv``: per-image labels, one column per class task and
``<task>.<attribute>`` columns per multi-label task, an empty cell = unlabelled. Every bad row is a
problem naming its line, so ``data check`` lists them all."""

from __future__ import annotations

import csv
from typing import Any

import numpy as np

from fusionsearch.data.folder_layout import FolderLayout, FolderTask, make_task, read_text
from fusionsearch.tasks.labels import MultiLabel
from fusionsearch.tasks.task import TASKS

__all__ = ["labels_csv"]


def _csv_columns(layout: FolderLayout, header: list[str], declared: dict[str, dict[str, Any]]) -> dict[str, list[int]]:
    """task -> the CSV columns that hold it (``task`` or ``task.attribute``)."""
    groups: dict[str, list[int]] = {}
    for c, col in enumerate(header[1:], start=1):
        name = col.split(".", 1)[0]
        if name not in declared and name not in TASKS:
            layout.notes.append(f"labels.csv column {col!r}: not a registered task nor declared in tasks.yaml: ignored")
            continue
        groups.setdefault(name, []).append(c)
    return groups


def _cell(layout: FolderLayout, task: FolderTask, text: str, where: str) -> Any:
    """One cell of a class task: an index, a class name (kept as text until the names are known), or -1."""
    text = text.strip()
    if text == "":
        return -1
    try:
        value = int(text)
    except ValueError:
        return text
    if value < 0:
        layout.problems.append(
            f"{where}: {task.name} is {value}, not a class index >= 0 (leave it empty if unlabelled)"
        )
        return -1
    return value


def _attribute(layout: FolderLayout, text: str, where: str) -> int:
    text = text.strip()
    if text in ("", "-1"):  # empty: unlabelled; -1 is read as unlabelled too (the kind's own value)
        return -1
    if text in ("0", "1"):
        return int(text)
    layout.problems.append(f"{where} is {text!r}, not 0, 1 or empty")
    return -1


def labels_csv(layout: FolderLayout, declared: dict[str, dict[str, Any]]) -> None:
    """Per-image tasks from labels.csv: one column per class task, ``task.attr`` columns per
    multi-label task; an empty cell (or a missing row) is unlabelled."""
    path = layout.root / "labels.csv"
    text = read_text(layout, path) if path.exists() else None
    if text is None:
        return
    rows = list(csv.reader(text.splitlines()))
    if not rows or not rows[0] or rows[0][0].strip() != "id":
        layout.problems.append("labels.csv: the first line must be the header id,<task>,<task>.<attribute>,...")
        return
    header = [h.strip() for h in rows[0]]
    tasks = _csv_tasks(layout, header, declared)
    seen: set[str] = set()
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        i = row[0].strip()
        if len(row) != len(header):
            layout.problems.append(f"labels.csv line {n}: {len(row)} fields, the header has {len(header)}")
        elif i in seen:
            layout.problems.append(f"labels.csv line {n}: id {i!r} has a second row")
        elif i not in layout.images:
            layout.problems.append(f"labels.csv line {n}: orphan label: no image with id {i!r}")
        else:
            seen.add(i)
            for task, cols in tasks.values():
                task.values[i] = _row_value(layout, task, row, cols, header, f"labels.csv line {n}")
    for task, _ in tasks.values():
        _class_names(layout, task)
        layout.tasks[task.name] = task


def _csv_tasks(
    layout: FolderLayout, header: list[str], declared: dict[str, dict[str, Any]]
) -> dict[str, tuple[FolderTask, list[int]]]:
    """The per-image tasks the header names, each with its columns."""
    tasks: dict[str, tuple[FolderTask, list[int]]] = {}
    for name, cols in _csv_columns(layout, header, declared).items():
        task = make_task(layout, name, declared.get(name, {}))
        if task is None:
            continue
        if task.dense:
            layout.problems.append(f"labels.csv: {name} is a per-pixel task ({task.kind}): give it as a folder {name}/")
        elif isinstance(task.kind, MultiLabel):
            task.names = tuple(header[c].split(".", 1)[1] if "." in header[c] else header[c] for c in cols)
            task.size = len(cols)
            tasks[name] = (task, cols)
        elif len(cols) > 1 or "." in header[cols[0]]:
            layout.problems.append(f"labels.csv: {name} is one class per image: one column named {name!r}")
        else:
            tasks[name] = (task, cols)
    return tasks


def _row_value(
    layout: FolderLayout, task: FolderTask, row: list[str], cols: list[int], header: list[str], where: str
) -> Any:
    if isinstance(task.kind, MultiLabel):
        return np.array([_attribute(layout, row[c], f"{where}: {header[c]}") for c in cols], dtype=np.float32)
    return _cell(layout, task, row[cols[0]], where)


def _class_names(layout: FolderLayout, task: FolderTask) -> None:
    """A class column of names becomes indices: the declared names' order, else sorted names."""
    if isinstance(task.kind, MultiLabel):
        return
    names = sorted({v for v in task.values.values() if isinstance(v, str)})
    if not names:
        return
    if any(isinstance(v, int) and v >= 0 for v in task.values.values()):
        layout.problems.append(f"labels.csv: {task.name} mixes class indices and class names: use one or the other")
    order = list(task.names) if task.names else names
    unknown = [n for n in names if n not in order]
    if unknown:
        layout.problems.append(f"labels.csv: {task.name} has class names not in tasks.yaml's classes: {unknown[:5]}")
    if not task.names:
        task.names = tuple(names)
        layout.notes.append(f"{task.name}: classes read from the labels, in sorted order: {', '.join(names)}")
    index = {n: k for k, n in enumerate(order)}
    task.values = {i: index.get(v, -1) if isinstance(v, str) else v for i, v in task.values.items()}
