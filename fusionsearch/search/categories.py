"""The per-category results of a study's trials and its training label counts, recorded for the
report's data-starved analysis (``report.starved``: the cross-stitch paper's Figures 5 and 6).

Every completed trial stores, as its user attribute ``per_category``, ``{task: {category:
value}}`` for the tasks that define ``per_category`` (per-class IoU of ``seg``, per-attribute AP
of ``attr``, ...), from the same final evaluation as its metrics; NaN (a category nothing labels
nor predicts) is stored as null, which JSON has.

The training label counts are stored once per study, as the study's user attribute
``category_counts`` (``{task: {category: count}}``), by the first trial that records per-category
results and finds none there. A worker does it because a worker has the study's data: ``report``
may run on a machine that only reaches the storage, and it only reads. It costs one pass over the
training labels once per study (``data.categories.training_counts``: the data set's own
``category_counts`` where it has one, e.g. the synthetic scenes', cached; a folder's stored
attribute values or label files), small next to the warm start that precedes it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from fusionsearch.data.categories import training_counts
from fusionsearch.errors import FusionSearchError, FusionSearchWarning
from fusionsearch.search.records import StudyRecord, TrialRecord

__all__ = ["record_per_category", "COUNTS_ATTR", "NAMES_ATTR", "per_category_attr", "per_category_lines"]

COUNTS_ATTR = StudyRecord.category_counts.key  # the study's stored names (``records.StudyRecord``)
NAMES_ATTR = StudyRecord.category_names.key


def per_category_attr(per: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    """``per`` as a JSON-clean user attribute: NaN and infinities become null."""
    return {
        t: {c: (float(v) if v is not None and math.isfinite(v) else None) for c, v in cats.items()}
        for t, cats in per.items()
    }


def record_per_category(trial: optuna.Trial, study: optuna.Study, result: Any, exp: Any) -> None:
    """Store ``result.per_category`` on ``trial`` and, the first time in the study, the training
    label counts (and class names, where the data set has them) of those tasks on ``study``."""
    per = getattr(result, "per_category", None)
    if not per:
        return
    TrialRecord(trial).per_category = per_category_attr(per)
    stored = StudyRecord(study)
    if stored.category_counts is not None:
        return
    train = exp.datasets()[0]
    tasks = exp.tasks()
    counts = {}
    for t in per:
        task = tasks[t]
        try:
            counts[t] = training_counts(train, t, task.label, task.out_channels, attrs=hasattr(task, "per_attribute"))
        except FusionSearchError as e:  # an analysis of the report: never a reason to fail the trial
            warnings.warn(f"{t}: no training label counts ({e})", FusionSearchWarning, stacklevel=2)
    stored.category_counts = counts
    names = _names(train, tasks, list(per))
    if names:
        stored.category_names = names


def _names(train: Any, tasks: Mapping[str, Any], which: list[str]) -> dict[str, list[str]]:
    """Category names for display, indexed by the category key: the data set's ``classes`` for an
    index-map task of that many classes (``seg``), a folder's declared class or attribute names
    (``_folder_names``), and ``box_classes`` (from 1) / ``box_attributes`` for ``det`` / ``box_attr``."""
    from fusionsearch.tasks.labels import IndexMap

    out: dict[str, list[str]] = {}
    folder = getattr(train, "labels", None)
    for t in which:
        own = _folder_names(folder.get(t), tasks[t]) if isinstance(folder, Mapping) else None
        classes = getattr(train, "classes", None)
        boxes: dict[str, Any] = {
            "det": getattr(train, "box_classes", None),
            "box_attr": getattr(train, "box_attributes", None),
        }
        typ = getattr(tasks[t], "task_name", t)
        if own is not None:
            out[t] = own
        elif (named := boxes.get(typ)) is not None and len(named) == tasks[t].out_channels:  # det counts from 1
            out[t] = (["background"] if typ == "det" else []) + [str(n) for n in named]
        elif isinstance(tasks[t].label, IndexMap) and classes is not None and len(classes) == tasks[t].out_channels:
            out[t] = [str(n) for n in classes]
    return out


def _folder_names(label: Any, task: Any) -> list[str] | None:
    """A folder task's names, indexed by ``task``'s category keys, where it declares one for each
    category: a box task's attribute names (``box_attr``: its ``per_attribute``) or its class names
    after the background (``det``'s classes count from 1; a ``source:`` task shares its origin's
    class names), else the class or attribute names (``seg``, ``cls``, ``attr``); None without."""
    from fusionsearch.tasks.boxes import Boxes

    if label is None:
        return None
    if isinstance(getattr(label, "kind", None), Boxes):
        attrs = hasattr(task, "per_attribute")
        names = list(getattr(label, "attr_names" if attrs else "names", ()))
        offset = [] if attrs else ["background"]
    else:
        names, offset = list(getattr(label, "names", ())), []
    if not names or len(names) != task.out_channels:
        return None
    return offset + [str(n) for n in names]


def per_category_lines(result: Any, exp: Any, limit: int = 20) -> list[str]:
    """One line per task with per-category results, for ``train``'s output: each category's value
    (per-class AP of ``det``, per-class IoU of ``seg``, per-attribute AP), named where the data set
    names its categories; a task of more than ``limit`` categories shows its first ``limit``."""
    per = getattr(result, "per_category", None) or {}
    if not per:
        return []
    names = _names(exp.datasets()[0], exp.tasks(), list(per))
    lines = []
    for task, values in per.items():
        own = names.get(task, [])
        cells = [
            f"{own[int(c)] if c.isdigit() and int(c) < len(own) else c} "
            f"{'-' if v is None or not math.isfinite(v) else f'{v:.1f}'}"
            for c, v in list(values.items())[:limit]
        ]
        more = f", ... ({len(values)} in all)" if len(values) > limit else ""
        lines.append(f"{task} per category: " + ", ".join(cells) + more)
    return lines
