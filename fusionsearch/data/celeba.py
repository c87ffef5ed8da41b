"""CelebA: 40 face attributes and 5 landmarks on the aligned-and-cropped faces (Liu et al., ICCV 2015).

Layout read, torchvision's (``torchvision/datasets/celeba.py``, which nests it under ``celeba/``),
or the official Google Drive folders (``Anno/``, ``Eval/``, ``Img/``, as the MGDA code
``multi_task/loaders/celeba_loader.py`` reads it); ``root`` may be the folder itself or its parent::

    root/[celeba/]img_align_celeba/000001.jpg ...        (or Img/img_align_celeba/)  178 x 218 JPEGs
    root/[celeba/]list_attr_celeba.txt                   (or Anno/)
    root/[celeba/]list_landmarks_align_celeba.txt        (or Anno/; not needed with landmarks: false)
    root/[celeba/]list_eval_partition.txt                (or Eval/)

``list_attr_celeba.txt``: the image count, then the 40 attribute names, then ``000001.jpg -1  1 ...``
(40 values in {-1, 1}, space-padded). ``list_landmarks_align_celeba.txt``: the count, then
``lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x
rightmouth_y``, then ``000001.jpg   69  109  106 ...`` (pixels of the aligned image).
``list_eval_partition.txt``: ``000001.jpg 0`` per image, 0 train, 1 valid, 2 test, no header.
``identity_CelebA.txt`` and ``list_bbox_celeba.txt`` are not read. Fields are split on any run of
whitespace (the files pad them); rows are matched to the partition by file name.

Every CelebA image has all 40 attributes, so an attribute's -1 is "absent", 0 in our ``multi_label``
kind, where -1 means "not labelled" (torchvision maps {-1, 1} to {0, 1} the same way). ``attributes``
groups the attributes into tasks of type ``attr``, each with its own outputs:
``attributes: {attr_hair: [Black_Hair, Blond_Hair], attr_mouth: [Smiling]}``; without it, the task
``attr`` holds all 40. ``landmarks`` is (5, 2) pixel coordinates (the ``points`` kind, NaN = not
labelled) that follow the image through the resize and the flip, which swaps left and right.

Splits: ``train`` is partition 0, ``val`` partition 1 (``eval_split: test`` makes it 2), ``test``
partition 2. Items: ``{"image": float32 (3, H, W) ImageNet-normalised, "attr" or each group: int64
(A,) 1/0, "landmarks": float32 (5, 2)}``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fusionsearch.data.base import MultiTaskDataset, register_dataset
from fusionsearch.data.transforms import (
    DataError,
    MissingDataError,
    as_hw,
    check_root,
    finish_item,
    read_lines,
)
from fusionsearch.errors import ArgumentError
from fusionsearch.tasks.labels import LabelKind
from fusionsearch.tasks.points import Points
from fusionsearch.tasks.task import MULTI_LABEL

__all__ = [
    "CelebA",
    "ATTRIBUTES",
    "LANDMARK_NAMES",
    "FLIP_PAIRS",
    "attribute_groups",
    "find_files",
    "read_partition",
    "read_table",
]

# list_attr_celeba.txt's second line, in order
ATTRIBUTES = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)
LANDMARK_NAMES = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
FLIP_PAIRS = ((0, 1), (3, 4))  # a mirrored face's left eye is its right eye, and so for the mouth corners
SPLITS = {"train": 0, "valid": 1, "test": 2}
OUR_SPLITS = ("train", "val", "test")
_FILES = {
    "attr": ("list_attr_celeba.txt", "Anno"),
    "landmarks": ("list_landmarks_align_celeba.txt", "Anno"),
    "partition": ("list_eval_partition.txt", "Eval"),
    "images": ("img_align_celeba", "Img"),
}


def attribute_groups(
    attributes: Mapping[str, Sequence[str]] | None, names: Sequence[str] = ATTRIBUTES
) -> dict[str, list[int]]:
    """Task name -> column indices of its attributes: ``{"attr": all}`` without groups; an unknown
    attribute name, an empty group or a group named ``landmarks`` is an ArgumentError."""
    if attributes is None:
        return {"attr": list(range(len(names)))}
    if not isinstance(attributes, Mapping) or not attributes:
        raise ArgumentError(f"attributes must map task names to lists of CelebA attributes, got {attributes!r}")
    out = {}
    for group, members in attributes.items():
        if group in ("landmarks", "image") or not isinstance(members, (list, tuple)) or not members:
            raise ArgumentError(f"attributes.{group}: a task name other than landmarks with a list of attributes")
        unknown = [m for m in members if m not in names]
        if unknown:
            raise ArgumentError(
                f"attributes.{group}: unknown CelebA attribute(s) {', '.join(map(str, unknown))};"
                f" valid: {', '.join(names)}"
            )
        out[str(group)] = [list(names).index(m) for m in members]
    return out


def find_files(root: Path, landmarks: bool = True) -> dict[str, Path]:
    """Where each file (and the image folder) is: in ``root``, ``root/celeba`` or their official
    subfolder; MissingDataError listing the places tried for the first one that is nowhere."""
    bases = [root, root / "celeba"]
    out = {}
    for key, (name, sub) in _FILES.items():
        if key == "landmarks" and not landmarks:
            continue
        tried = [b / name for b in bases] + [b / sub / name for b in bases]
        found = next((p for p in tried if p.exists()), None)
        if found is None:
            hint = " (landmarks: false reads attributes only)" if key == "landmarks" else ""
            raise MissingDataError(f"no CelebA {name} under {str(root)!r}: tried {', '.join(map(str, tried))}{hint}")
        out[key] = found
    return out


def _rows(path: Path, skip: int) -> list[tuple[int, list[str]]]:
    lines = read_lines(path)
    return [(n, line.split()) for n, line in enumerate(lines, 1) if n > skip and line.strip()]


def read_table(path: Path, kind: type = int) -> tuple[list[str], list[str], np.ndarray]:
    """A CelebA list with a count line and a header line: (column names, file names, values as
    ``kind``). A malformed or missing count, a row of the wrong width, a value that is not a number
    or a count that disagrees with the rows (a truncated file) is a DataError naming file and line."""
    head = _rows(path, 0)[:2]
    if len(head) < 2 or len(head[0][1]) != 1 or not head[0][1][0].isdigit() or head[0][0] != 1:
        raise DataError(f"{str(path)!r} line 1: expected the image count, then a line of column names")
    count, columns = int(head[0][1][0]), head[1][1]
    names, values = [], []
    for n, fields in _rows(path, head[1][0]):
        if len(fields) != len(columns) + 1:
            raise DataError(
                f"{str(path)!r} line {n}: {len(fields)} fields, expected a file name and {len(columns)} values"
            )
        try:
            values.append([kind(v) for v in fields[1:]])
        except ValueError:
            raise DataError(
                f"{str(path)!r} line {n}: a value that is not a number in {' '.join(fields[1:])!r}"
            ) from None
        names.append(fields[0])
    if len(names) != count:
        raise DataError(f"{str(path)!r}: line 1 says {count} images, the file lists {len(names)} (truncated?)")
    return columns, names, np.asarray(values, dtype=np.float64 if kind is float else np.int64).reshape(-1, len(columns))


def read_partition(path: Path) -> tuple[list[str], np.ndarray]:
    """``list_eval_partition.txt``: (file names, partition 0/1/2), DataError naming file and line."""
    names, parts = [], []
    for n, fields in _rows(path, 0):
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"{str(path)!r} line {n}: expected 'FILE 0|1|2', got {' '.join(fields)!r}")
        names.append(fields[0])
        parts.append(int(fields[1]))
    return names, np.asarray(parts, dtype=np.int64)


def _check_attributes(path: Path, values: np.ndarray) -> np.ndarray:
    """{-1, 1} -> {0, 1}; any other value is a DataError naming the file and its line."""
    bad = np.argwhere((values != 1) & (values != -1))
    if len(bad):
        row, col = bad[0]
        line = _rows(path, 0)[int(row) + 2][0]
        raise DataError(f"{str(path)!r} line {line}: attribute value {int(values[row, col])}, expected -1 or 1")
    return (values == 1).astype(np.int64)


def _align(path: Path, names: list[str], rows: list[str]) -> np.ndarray:
    """Row index in ``names`` of each file of the partition; DataError naming the first one missing."""
    where = {n: i for i, n in enumerate(names)}
    missing = next((r for r in rows if r not in where), None)
    if missing is not None:
        raise DataError(f"{str(path)!r} has no row for {missing!r}, which list_eval_partition.txt lists")
    return np.array([where[r] for r in rows], dtype=np.int64)


@functools.lru_cache(maxsize=4)
def _cached_tables(attr: str, landmarks: str | None, partition: str, stamp: tuple[int, ...]) -> dict[str, Any]:
    """The three lists, parsed once for every split of a run (200k lines each); ``stamp`` is the
    files' mtimes and sizes, so an edited file is read again."""
    files, parts = read_partition(Path(partition))
    attr_names, attr_files, values = read_table(Path(attr))
    out = {"files": files, "parts": parts, "attr_names": attr_names}
    out["attr"] = _check_attributes(Path(attr), values)[_align(Path(attr), attr_files, files)]
    if landmarks is not None:
        columns, lm_files, coords = read_table(Path(landmarks), float)
        if len(columns) % 2:
            raise DataError(f"{landmarks!r} line 2: {len(columns)} columns, expected x and y per point")
        out["landmarks"] = coords[_align(Path(landmarks), lm_files, files)].reshape(len(files), -1, 2)
    return out


def _stamp(*paths: Path | None) -> tuple[int, ...]:
    return tuple(v for p in paths if p is not None for v in (p.stat().st_mtime_ns, p.stat().st_size))


@register_dataset("celeba")
class CelebA(MultiTaskDataset):
    """CelebA: face attributes (``attr``) and ``landmarks``.

    CelebA attributes (``attr``, or the ``attributes`` groups) and ``landmarks``; see the module
    docstring for the files read and the conventions.

    ``size`` is the output (H, W) or side (None keeps the aligned 218 x 178); ``augment`` (default:
    on for train) flips left-right with p = 0.5 from torch's global RNG, landmarks mirrored and
    swapped; ``length`` keeps the first N images of the split; ``eval_split`` is the partition our
    ``val`` split reads (``valid`` or ``test``); ``landmarks: false`` drops the task and its file.
    """

    tasks: dict[str, int] = {"attr": len(ATTRIBUTES), "landmarks": 2 * len(LANDMARK_NAMES)}

    @staticmethod
    def tasks_for(
        attributes: Mapping[str, Sequence[str]] | None = None, landmarks: bool = True, **_: object
    ) -> dict[str, int]:
        """The tasks and their outputs without reading files (recipes build nets from this)."""
        out = {t: len(cols) for t, cols in attribute_groups(attributes).items()}
        return {**out, "landmarks": 2 * len(LANDMARK_NAMES)} if landmarks else out

    @staticmethod
    def task_types_for(attributes: Mapping[str, Sequence[str]] | None = None, **_: object) -> dict[str, str]:
        """Each attribute group is a task of type ``attr``."""
        return {t: "attr" for t in attribute_groups(attributes)}

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        attributes: dict[str, list[str]] | None = None,
        landmarks: bool = True,
        size: int | tuple[int, int] | None = None,
        augment: bool | None = None,
        length: int | None = None,
        eval_split: str = "valid",
    ) -> None:
        if split not in OUR_SPLITS:
            raise ArgumentError(f"split must be one of {', '.join(OUR_SPLITS)}, got {split!r}")
        if eval_split not in ("valid", "test"):
            raise ArgumentError(f"eval_split must be valid or test, got {eval_split!r}")
        if length is not None and length < 1:
            raise ArgumentError(f"length must be positive, got {length}")
        self.root = check_root(root, "CelebA")
        self.files = find_files(self.root, landmarks)
        lm = self.files.get("landmarks")
        paths = (self.files["attr"], lm, self.files["partition"])
        table = _cached_tables(str(paths[0]), None if lm is None else str(lm), str(paths[2]), _stamp(*paths))
        self.attr_names: list[str] = list(table["attr_names"])
        self.groups = attribute_groups(attributes, self.attr_names)
        part = SPLITS[eval_split] if split == "val" else SPLITS[split]
        rows = np.flatnonzero(table["parts"] == part)[:length]
        self.split = split
        self.filenames: list[str] = [table["files"][i] for i in rows]
        self.attributes = table["attr"][rows]
        self.landmarks = table["landmarks"][rows].astype(np.float32) if lm is not None else None
        self.tasks = {t: len(c) for t, c in self.groups.items()}
        kinds: dict[str, LabelKind] = {t: MULTI_LABEL for t in self.groups}
        if self.landmarks is not None:
            self.tasks["landmarks"] = 2 * self.landmarks.shape[1]
            kinds["landmarks"] = Points(flip_pairs=FLIP_PAIRS if self.landmarks.shape[1] == 5 else ())
        self.label_kinds = kinds
        self.size = as_hw(size)
        self.augment = split == "train" if augment is None else bool(augment)

    def __len__(self) -> int:
        return len(self.filenames)

    def item_ids(self) -> list[str]:
        """Each image's file name (``000001.jpg``), which ``data.labelled`` lists."""
        return list(self.filenames)

    def load_image(self, index: int) -> Tensor:
        """(3, H, W) float in [0, 1] at the file's own size."""
        path = self.files["images"] / self.filenames[index]
        if not path.is_file():
            raise MissingDataError(f"CelebA image {str(path)!r} does not exist")
        try:
            with Image.open(path) as im:
                array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        except OSError as e:
            raise DataError(f"cannot read CelebA image {str(path)!r}: {e}") from e
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self.filenames):
            raise IndexError(f"index {index} out of range for {len(self.filenames)} CelebA images")
        item: dict[str, Tensor] = {"image": self.load_image(index)}
        for task, cols in self.groups.items():
            item[task] = torch.from_numpy(self.attributes[index, cols].copy())
        if self.landmarks is not None:
            item["landmarks"] = torch.from_numpy(self.landmarks[index].copy())
        return finish_item(item, self.size, self.augment, self.label_kinds)
