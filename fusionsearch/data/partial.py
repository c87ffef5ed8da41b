"""Partial labels: which training images carry which task's label.

Real multi-task data is rarely labelled for every task on every image: depth and normals come
from a sensor for every frame, segmentation is drawn by hand on a few. A recipe says so with
``data.labelled: {TASK: SPEC}``; each SPEC is

- a share in (0, 1]: that share of the split's images keep the label, the rest lose it. Which
  ones is a pure function of (seed, task, item id), so every trial, worker and machine of a
  study sees the same labelled set, and a longer ``train_length`` keeps the shorter one's
  choice wherever the items are the same;
- a list of item ids (``MultiTaskDataset.item_ids``: a synthetic scene's index, an NYUv2
  image's file stem, an IMDB-WIKI image's path as the metadata stores it);
- a path to a text file of such ids, one per line (``#`` starts a comment).

An image without a task's label holds that label kind's ignore value (``LabelKind.unlabelled_like``),
so resizing, flipping, batching and caching work unchanged; a task's ``loss`` and metrics skip
it, and training gives the task no loss in a step whose batch labels it nowhere. Only the
training split is thinned: validation stays fully labelled, so every plan is scored on the same
pixels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from fusionsearch.data.transforms import kind_of
from fusionsearch.errors import DataError
from fusionsearch.paths import read_input

__all__ = [
    "PartialLabels",
    "item_ids",
    "labelled_mask",
    "check_labelled",
    "describe_labelled",
    "id_files",
    "check_id_files",
    "MAX_ID_FILE_BYTES",
]

MAX_ID_FILE_BYTES = 1 << 28  # one id a line: millions of ids


def item_ids(data: Dataset) -> list[str]:
    """The ids of ``data``'s items in order: its ``item_ids()`` if it has one, else the indices."""
    own = getattr(data, "item_ids", None)
    if callable(own):
        return [str(i) for i in own()]
    return [str(i) for i in range(len(data))]  # type: ignore[arg-type]


def check_labelled(labelled: Any, tasks: Sequence[str], where: str = "data.labelled") -> dict[str, Any]:
    """``labelled`` as a mapping of known tasks to a share, an id list or an id-file path; an
    error that names the problem otherwise (before any data is read)."""
    if labelled is None:
        return {}
    if not isinstance(labelled, Mapping):
        raise DataError(f"{where} must map tasks to a share, an id list or a file, got {labelled!r}")
    out: dict[str, Any] = {}
    for task, spec in labelled.items():
        if task not in tasks:
            raise DataError(f"{where} names {task!r}, which is not one of the tasks ({', '.join(tasks)})")
        if isinstance(spec, bool):
            raise DataError(f"{where}.{task} must be a share in (0, 1], an id list or a file, got {spec!r}")
        if isinstance(spec, (int, float)):
            if not 0 < spec <= 1:
                raise DataError(f"{where}.{task} is a share of the training images: in (0, 1], got {spec!r}")
            out[task] = float(spec)
        elif isinstance(spec, str):
            out[task] = spec
        elif isinstance(spec, Sequence) and spec:
            out[task] = [str(i) for i in spec]
        else:
            raise DataError(f"{where}.{task} must be a share in (0, 1], an id list or a file, got {spec!r}")
    return out


def _unit(seed: int, task: str, key: str) -> int:
    digest = hashlib.blake2b(f"{seed}/{task}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _id_file(path: str, task: str) -> bytes:
    """An id file's bytes: a regular file under the bound (a FIFO would block, /dev/zero fill the memory)."""
    what = f"data.labelled.{task}: the id file {path!r}"
    return read_input(Path(path).expanduser(), what, MAX_ID_FILE_BYTES, DataError)


def _read_ids(path: str, task: str) -> list[str]:
    try:
        lines = _id_file(path, task).decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"data.labelled.{task}: the id file {path!r} is not UTF-8 text (one id a line)") from None
    ids = [line.split("#", 1)[0].strip() for line in lines]
    ids = [i for i in ids if i]
    if not ids:
        raise DataError(f"data.labelled.{task}: the id file {path!r} lists no ids")
    return ids


def id_files(labelled: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
    """Task -> ``{"file": PATH, "sha256": DIGEST}`` for each task labelled by an id file. A study
    stores it: the path alone let a file edited between a stop and the resume mix two labellings
    in one study (``check_id_files``)."""
    out = {}
    for task, spec in (labelled or {}).items():
        if isinstance(spec, str):
            out[task] = {"file": spec, "sha256": hashlib.sha256(_id_file(spec, task)).hexdigest()}
    return out


def check_id_files(stored: Mapping[str, Any] | None, labelled: Mapping[str, Any] | None, study: str) -> dict[str, Any]:
    """The id files of ``labelled`` now (``id_files``), after checking that each has the content
    ``stored`` when the study began; a changed file is a ``DataError`` naming it."""
    now = id_files(labelled)
    for task, was in (stored or {}).items():
        if task in now and now[task]["sha256"] != was.get("sha256"):
            raise DataError(
                f"the id file {now[task]['file']!r} (data.labelled.{task}) has changed since study {study!r} began:"
                " put back the file it was made with, or start a new study (another --study name)"
            )
    return now


def labelled_mask(ids: Sequence[str], spec: float | str | Sequence[str], task: str, seed: int = 0) -> np.ndarray:
    """A bool per item: whether it keeps ``task``'s label under ``spec`` (see the module docstring)."""
    n = len(ids)
    if isinstance(spec, float):
        if spec >= 1:
            return np.ones(n, dtype=bool)
        keep = max(1, round(spec * n))
        order = sorted(range(n), key=lambda i: _unit(seed, task, ids[i]))
        mask = np.zeros(n, dtype=bool)
        mask[order[:keep]] = True
        return mask
    wanted = _read_ids(spec, task) if isinstance(spec, str) else [str(i) for i in spec]
    index = {k: i for i, k in enumerate(ids)}
    unknown = [k for k in dict.fromkeys(wanted) if k not in index]
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise DataError(
            f"data.labelled.{task} names {len(unknown)} id(s) not in the training split ({shown}); ids look like"
            f" {ids[0]!r} (a shorter train_length keeps only the first items)"
        )
    mask = np.zeros(n, dtype=bool)
    mask[[index[k] for k in wanted]] = True
    return mask


class PartialLabels(Dataset):
    """``data`` with each task's label kept only on the items ``labelled`` names (see the module
    docstring); everything else (``tasks``, ``deterministic``, ...) is the wrapped set's."""

    def __init__(self, data: Dataset, labelled: Mapping[str, Any], seed: int = 0) -> None:
        self.data = data
        ids = item_ids(data)
        provided = getattr(data, "tasks", None)
        specs = check_labelled(labelled, list(provided) if provided else list(labelled))
        self.masks = {t: labelled_mask(ids, spec, t, seed) for t, spec in specs.items()}
        own = getattr(data, "label_kinds", None)
        self.kinds = {t: kind_of(t, own) for t in self.masks}

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name in ("data", "masks", "kinds"):
            raise AttributeError(name)
        return getattr(self.data, name)

    def counts(self) -> dict[str, tuple[int, int]]:
        """Task -> (labelled items, all items)."""
        return {t: (int(m.sum()), len(m)) for t, m in self.masks.items()}

    def labelled_indices(self, task: str) -> list[int]:
        """The indices of the items that keep ``task``'s label: those the wrapped set labels (its
        own ``labelled_indices``, else every item), less those ``labelled`` takes it from."""
        own = getattr(self.data, "labelled_indices", None)
        inner = list(own(task)) if callable(own) else list(range(len(self)))
        if task not in self.masks:
            return inner
        return [i for i in inner if self.masks[task][i]]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = self.data[index]
        for task, mask in self.masks.items():
            if not mask[index]:
                item = {**item, task: self.kinds[task].unlabelled_like(item[task])}
        return item


def describe_labelled(data: Dataset) -> str:
    """One line for the command line: which tasks are partly labelled, and on how many images."""
    counts = data.counts() if hasattr(data, "counts") else {}
    if not counts:
        return "every training image is labelled for every task"
    parts = [f"{t} on {k} of {n} training images ({100 * k / n:.0f}%)" for t, (k, n) in counts.items()]
    return "partial labels: " + ", ".join(parts) + "; validation fully labelled"
