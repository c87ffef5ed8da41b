"""How many training labels each category of a task has: the x axis of the data-starved analysis
(the cross-stitch paper's Figures 5 and 6: a category's gain against its training label count).

A data set MAY define ``category_counts(task) -> dict[str, int]`` (category index as a string ->
pixels of a class, positive images of an attribute, images of a class, objects of a detection
class) from what it already knows; ``training_counts`` asks it, and counts from the items of the
data set (``count_from_items``) where it has no such method or where partial labels hide some of
its labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from fusionsearch.tasks.labels import ClassLabel, IndexMap, LabelKind, MultiLabel

__all__ = ["training_counts", "count_from_items", "add_counts"]


def add_counts(counts: dict[str, int], label: Any, kind: LabelKind | None, size: int, attrs: bool = False) -> None:
    """Add one item's ``label`` to ``counts``: an index map's pixels per class (not its ignore
    value), a multi-label's positives per attribute, a class label's image, a boxes dict's objects
    per class (its ``attrs`` positives per attribute with ``attrs``). Anything else adds nothing."""
    if isinstance(label, Mapping):  # the boxes kind: torchvision's targets plus attrs
        if attrs:
            values = label.get("attrs")
            per = (values == 1).sum(0) if isinstance(values, Tensor) and values.numel() else None
            pairs = enumerate(per.tolist()) if per is not None else iter(())
        else:
            classes = label.get("labels")
            found = torch.bincount(classes.long()) if isinstance(classes, Tensor) and classes.numel() else None
            pairs = enumerate(found.tolist()) if found is not None else iter(())
    elif not isinstance(label, Tensor):
        return
    elif isinstance(kind, IndexMap):
        flat = label.flatten().long()
        flat = flat[(flat != kind.ignore_index) & (flat >= 0) & (flat < size)]
        pairs = enumerate(torch.bincount(flat, minlength=size).tolist())
    elif isinstance(kind, MultiLabel):
        pairs = enumerate((label.flatten() == 1).long().tolist())
    elif isinstance(kind, ClassLabel):
        v = int(label.flatten()[0]) if label.numel() else -1
        pairs = iter([(v, 1)] if 0 <= v < size else [])
    else:
        return
    for c, n in pairs:
        if n:
            counts[str(c)] = counts.get(str(c), 0) + int(n)


def count_from_items(
    data: Dataset, task: str, kind: LabelKind | None, size: int, attrs: bool = False
) -> dict[str, int]:
    """Training label counts of ``task`` read from every item of ``data`` (``add_counts``), every
    category of ``size`` present with 0 where nothing labels it (boxes: the categories seen).

    Its cost is one pass over the data set, reading (decoding or generating) each item once, as
    an epoch without the network does; no progress is shown (a worker calls it once per study,
    ``search.categories``). Items that a data set augments count what their crop shows."""
    fixed = isinstance(kind, (IndexMap, MultiLabel, ClassLabel))
    counts: dict[str, int] = {str(c): 0 for c in range(size)} if fixed else {}
    with torch.random.fork_rng(devices=[]):  # an augmenting set draws its flips: the caller's draws stay as they were
        for i in range(len(data)):  # type: ignore[arg-type]
            add_counts(counts, data[i][task], kind, size, attrs)
    return counts


def _unwrap(data: Dataset, task: str) -> tuple[Dataset, bool]:
    """The data set under memory caches and partial labels, and whether partial labels hide some
    of ``task``'s labels (then its own counts would count labels that training never sees)."""
    from fusionsearch.data.partial import PartialLabels

    partial = False
    while True:
        if isinstance(data, PartialLabels) and task in data.masks:
            partial = True
        inner = data.__dict__.get("data")
        if not isinstance(inner, Dataset):
            return data, partial
        data = inner


def training_counts(
    data: Dataset, task: str, kind: LabelKind | None = None, size: int | None = None, attrs: bool = False
) -> dict[str, int]:
    """Training label count per category of ``task`` in the training set ``data``: the data set's
    own ``category_counts(task)`` where it has one and sees every label, else one pass over its
    items (``count_from_items``). ``kind``, ``size``: the task's label kind and outputs (read
    from the data set when not given); ``attrs``: a boxes label's attributes, not its classes."""
    inner, partial = _unwrap(data, task)
    own = getattr(inner, "category_counts", None)
    if own is not None and not partial:
        return {str(k): int(v) for k, v in own(task).items()}
    kinds = getattr(data, "label_kinds", None) or {}
    kind = kinds.get(task) or kind
    n = int(size if size is not None else getattr(data, "tasks", {}).get(task, 0))
    return count_from_items(data, task, kind, n, attrs)
