"""attribute PASCAL (aPascal, Farhadi et al. 2009, "Describing objects by their attributes"):
objects of PASCAL VOC 2008 with 64 attributes each, for detection (``det``) and per-box attribute
prediction (``box_attr``), the second benchmark of the cross-stitch paper (Table 6, Figure 5).

The files as distributed (``attribute_data/`` of the release), found in ``root`` or
``root/attribute_data``::

    apascal_train.txt     the train split: one object per line, space-separated:
    apascal_test.txt      the val split:   image file name, class name, x1 y1 x2 y2, 64 values 0/1
    class_names.txt       optional: the 20 class names, one a line (else VOC's, ``APASCAL_CLASSES``)
    attribute_names.txt   optional: the 64 attribute names, one a line (else ``APASCAL_ATTRIBUTES``)

and the images of VOC 2008 (``JPEGImages/<name>``) under ``images``, else ``root/JPEGImages``,
``root/VOC2008/JPEGImages`` or ``root/VOCdevkit/VOC2008/JPEGImages``.

Conventions, stated because the release does not: the boxes are VOC's (the release's
``read_att_data.m`` reads them as ``[xmin ymin xmax ymax]`` from VOC's annotations), 1-based and
inclusive, so pixel columns x1..x2 are the object's; they become the ``boxes`` kind's 0-based pixel
edges ``[x1 - 1, y1 - 1, x2, y2]`` (the object's pixels u satisfy x1' <= u < x2'), clipped to the
image when it is read. A box with no pixel (x2 < x1 or y2 < y1 as written) is dropped, and the
count is in ``notes``: it can neither be learnt nor matched, and refusing the whole set for one
row of a file a user cannot fix helps nobody. A row whose 64 attributes are all 0 is kept as an
object for ``det`` with its attributes unlabelled (-1) for ``box_attr``: every object in aPascal
has some attribute (at least a shape or a material), so an all-zero row means "not annotated",
not "all absent". A line that cannot be read (too few fields, a coordinate that is not a number,
an attribute that is not 0 or 1, an unknown class) is one ``DataError`` naming the file and line.

Objects are grouped per image (an item is an image with all its objects, in the file's order);
``det`` and ``box_attr`` hold the same dict: ``labels`` 1..20 over ``classes``, ``attrs`` (n, 64).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from fusionsearch.data.base import MultiTaskDataset, register_dataset
from fusionsearch.data.folder import read_image
from fusionsearch.data.transforms import DataError, MissingDataError, as_hw, check_root, finish_item, read_lines
from fusionsearch.errors import ArgumentError
from fusionsearch.tasks.boxes import BOXES, make_boxes
from fusionsearch.tasks.labels import LabelKind

__all__ = ["APascal", "APASCAL_CLASSES", "APASCAL_ATTRIBUTES", "read_apascal"]

APASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
APASCAL_ATTRIBUTES = (
    "2D Boxy", "3D Boxy", "Round", "Vert Cyl", "Horiz Cyl", "Occluded", "Tail", "Beak", "Head", "Ear", "Snout",
    "Nose", "Mouth", "Hair", "Face", "Eye", "Torso", "Hand", "Arm", "Leg", "Foot/Shoe", "Wing", "Propeller",
    "Jet engine", "Window", "Row Wind", "Wheel", "Door", "Headlight", "Taillight", "Side mirror", "Exhaust", "Pedal",
    "Handlebars", "Engine", "Sail", "Mast", "Text", "Label", "Furn. Leg", "Furn. Back", "Furn. Seat", "Furn. Arm",
    "Horn", "Rein", "Saddle", "Leaf", "Flower", "Stem/Trunk", "Pot", "Screen", "Skin", "Metal", "Plastic", "Wood",
    "Cloth", "Furry", "Glass", "Feather", "Wool", "Clear", "Shiny", "Vegetation", "Leather",
)  # fmt: skip
SPLIT_FILES = {"train": "apascal_train.txt", "val": "apascal_test.txt"}


@dataclass
class APascalSplit:
    """One split's objects grouped per image (file name -> boxes in 0-based pixel edges, labels
    1..C, attrs with -1 rows for the unannotated), and what a person should know of it."""

    classes: tuple[str, ...]
    attributes: tuple[str, ...]
    images: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _attribute_folder(root: Path) -> Path:
    for folder in (root, root / "attribute_data"):
        if (folder / SPLIT_FILES["train"]).is_file() or (folder / SPLIT_FILES["val"]).is_file():
            return folder
    raise MissingDataError(
        f"aPascal: neither {str(root)!r} nor its attribute_data/ holds apascal_train.txt or apascal_test.txt"
    )


def _names(path: Path, default: tuple[str, ...], what: str) -> tuple[str, ...]:
    if not path.is_file():
        return default
    names = tuple(line.strip() for line in read_lines(path) if line.strip())
    if len(names) != len(default):
        raise DataError(f"{str(path)!r} lists {len(names)} {what}, aPascal has {len(default)}")
    return names


def _parse_line(
    line: str, where: str, index: dict[str, int], n_attrs: int
) -> tuple[str, int, list[float], list[float]]:
    """(image name, class 1..C, [x1, y1, x2, y2] as written, attributes) or DataError at ``where``."""
    fields = line.split()
    if len(fields) != 6 + n_attrs:
        raise DataError(f"{where}: {len(fields)} fields; expected image, class, x1 y1 x2 y2 and {n_attrs} attributes")
    name, cls = fields[0], fields[1]
    if cls not in index:
        raise DataError(f"{where}: class {cls!r} is not one of aPascal's ({', '.join(index)})")
    try:
        box = [float(v) for v in fields[2:6]]
    except ValueError:
        raise DataError(f"{where}: the box {' '.join(fields[2:6])!r} is not four numbers") from None
    attrs = fields[6:]
    bad = [a for a in attrs if a not in ("0", "1")]
    if bad:
        raise DataError(f"{where}: attribute value {bad[0]!r} is not 0 or 1")
    return name, index[cls] + 1, box, [float(a) for a in attrs]


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, stamp: int, classes: tuple[str, ...], attributes: tuple[str, ...]) -> APascalSplit:
    out = APascalSplit(classes, attributes)
    index = {c: k for k, c in enumerate(classes)}
    grouped: dict[str, list[tuple[int, list[float], list[float]]]] = {}
    empty = unannotated = 0
    for n, line in enumerate(read_lines(Path(path)), start=1):
        if not line.strip():
            continue
        name, label, (x1, y1, x2, y2), attrs = _parse_line(line, f"{path!r} line {n}", index, len(attributes))
        if x2 < x1 or y2 < y1:
            empty += 1
            continue
        if not any(attrs):
            unannotated += 1
            attrs = [-1.0] * len(attrs)
        grouped.setdefault(name, []).append((label, [x1 - 1, y1 - 1, x2, y2], attrs))
    for name, objs in grouped.items():
        out.images[name] = (
            np.array([o[1] for o in objs], dtype=np.float32),
            np.array([o[0] for o in objs], dtype=np.int64),
            np.array([o[2] for o in objs], dtype=np.float32),
        )
    file = Path(path).name
    if empty:
        out.notes.append(f"{file}: {empty} object(s) with an empty box (x2 < x1 or y2 < y1) dropped")
    if unannotated:
        out.notes.append(f"{file}: {unannotated} object(s) with all attributes 0 kept unlabelled for box_attr")
    return out


def read_apascal(root: str | Path, split: str) -> APascalSplit:
    """The ``split``'s objects per image, read once per file state."""
    if split not in SPLIT_FILES:
        raise ArgumentError(f"split must be train or val, got {split!r}")
    folder = _attribute_folder(check_root(root, "aPascal"))
    path = folder / SPLIT_FILES[split]
    if not path.is_file():
        raise MissingDataError(f"aPascal: the {split} split's file {str(path)!r} does not exist")
    classes = _names(folder / "class_names.txt", APASCAL_CLASSES, "classes")
    attributes = _names(folder / "attribute_names.txt", APASCAL_ATTRIBUTES, "attributes")
    return _read_cached(str(path), path.stat().st_mtime_ns, classes, attributes)


def _image_folder(root: Path, images: str | Path | None) -> Path:
    if images is not None:
        return check_root(images, "aPascal images")
    for folder in (root / "JPEGImages", root / "VOC2008" / "JPEGImages", root / "VOCdevkit" / "VOC2008" / "JPEGImages"):
        if folder.is_dir():
            return folder
    raise MissingDataError(
        f"aPascal: no VOC 2008 images under {str(root)!r} (JPEGImages/, VOC2008/JPEGImages/ or"
        " VOCdevkit/VOC2008/JPEGImages/); give their folder as data.images"
    )


@register_dataset("apascal")
class APascal(MultiTaskDataset):
    """aPascal: objects as ``det`` (20 classes) and ``box_attr`` (64 attributes).

    aPascal's objects as ``det`` (20 classes) and ``box_attr`` (64 attributes); see the module
    docstring for the files and conventions.

    ``size`` resizes every item to (H, W) (None keeps the native size), scaling the boxes;
    ``augment`` (default: on for the train split) flips left-right with p = 0.5 from torch's global
    RNG, which the training loader seeds per item; ``length`` keeps the first N images;
    ``images`` is the folder of VOC 2008's JPEGs when it is not under ``root``."""

    tasks: dict[str, int] = {"det": len(APASCAL_CLASSES), "box_attr": len(APASCAL_ATTRIBUTES)}
    label_kinds: ClassVar[dict[str, LabelKind]] = {"det": BOXES, "box_attr": BOXES}

    @staticmethod
    def tasks_for(**_: object) -> dict[str, int]:
        return dict(APascal.tasks)

    @staticmethod
    def notes_for(root: str | Path, **_: object) -> list[str]:
        """Objects dropped (empty boxes) and kept unannotated (all-zero rows), per split file."""
        return [n for split in SPLIT_FILES for n in read_apascal(root, split).notes]

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        size: int | tuple[int, int] | None = None,
        augment: bool | None = None,
        length: int | None = None,
        images: str | Path | None = None,
    ) -> None:
        if length is not None and length < 1:
            raise ArgumentError(f"length must be positive, got {length}")
        self.root = check_root(root, "aPascal")
        data = read_apascal(self.root, split)
        self.split, self.notes = split, list(data.notes)
        self.box_classes, self.box_attributes = data.classes, data.attributes
        self.image_folder = _image_folder(self.root, images)
        self.names = list(data.images)[:length]
        self.objects = {n: data.images[n] for n in self.names}
        self.size = as_hw(size)
        self.augment = split == "train" if augment is None else bool(augment)

    def __len__(self) -> int:
        return len(self.names)

    def item_ids(self) -> list[str]:
        """Each image's VOC id (the file name's stem)."""
        return [Path(n).stem for n in self.names]

    def load(self, index: int) -> dict[str, Tensor | dict[str, Tensor]]:
        """Image ``index`` at its native size in [0, 1] with its boxes: no resize, flip or normalisation."""
        name = self.names[index]
        path = self.image_folder / name
        if not path.is_file():
            raise MissingDataError(f"aPascal image {str(path)!r} does not exist")
        image = read_image(path)
        h, w = image.shape[1:]
        boxes, labels, attrs = self.objects[name]
        clipped = torch.from_numpy(boxes).clamp(min=torch.zeros(4), max=torch.tensor([w, h, w, h], dtype=torch.float32))
        label = make_boxes(clipped, labels, attrs)
        return {"image": image, "det": label, "box_attr": label}

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self.names):
            raise IndexError(f"index {index} out of range for {len(self.names)} aPascal images")
        return finish_item(self.load(index), self.size, self.augment, self.label_kinds)

    def category_counts(self, task: str) -> dict[str, int]:
        """Training label counts of this split (no image read), keyed as the tasks' ``per_category``:
        objects per class for ``det`` (class index 1..C), positive objects per attribute for
        ``box_attr`` (attribute index; unannotated rows count nowhere). Names: ``box_classes``,
        ``box_attributes``."""
        if task == "det":
            labels = np.concatenate([o[1] for o in self.objects.values()]) if self.objects else np.zeros(0, np.int64)
            counts = np.bincount(labels - 1, minlength=len(self.box_classes))
            return {str(c + 1): int(k) for c, k in enumerate(counts)}
        if task == "box_attr":
            rows = [o[2] for o in self.objects.values()]
            attrs = np.concatenate(rows) if rows else np.zeros((0, len(self.box_attributes)), np.float32)
            return {str(a): int(k) for a, k in enumerate((attrs == 1).sum(0))}
        raise ArgumentError(f"category_counts: aPascal counts det and box_attr, not {task!r}")
