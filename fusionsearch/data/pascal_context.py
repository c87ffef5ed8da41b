"""PASCAL-Context for multi-task learning (semantic segmentation, human parts, saliency, surface
normals), in the layout of ``PASCAL_MT.tgz`` as the multi-task survey reads it
(SimonVandenhende/Multi-Task-Learning-PyTorch ``data/pascal_context.py``, taken from
facebookresearch/astmt ``fblib/dataloaders/pascal_context.py``), 4998 train / 5105 val images::

    root/ImageSets/Context/{train,val}.txt       one image id per line (e.g. 2008_000002)
    root/JPEGImages/{id}.jpg                      RGB, 8 bit
    root/semseg/VOC12/{id}.png                    8 bit class indices (read first where it exists),
    root/semseg/pascal-context/{id}.png           else this: 0 = background, 1..20 = the VOC classes
    root/human_parts/{id}.mat                     PASCAL-Part annotation (variable ``anno``)
    root/sal_distill/{id}.png                     8 bit saliency, salient where v / 255 > 0.5
    root/normals_distill/{id}.png                 8 bit RGB, n = 2 v / 255 - 1
    root/pascal-context/trainval/{id}.mat         the 459-class ``LabelMap`` (masks the normals)

``seg``: the survey's 21 classes (VOC's 20 + background); any other value, 255 included, is
ignored (255). ``human_parts``: PASCAL-Part's ``anno`` holds ``(imname, objects)``, each object
``(class, class_ind, mask, parts)`` and each part ``(part_name, mask)``; the parts of every person
(``class_ind`` 15) are painted in order into 7 classes, the survey's default ``num_human_parts=6``
grouping of the 24 part names plus background (``PART_CLASSES``). An image with no person, or no
labelled part, is *unlabelled* for human parts (all 255), as the survey's ``AddIgnoreRegions``
makes it, not background: it adds nothing to the loss or the metrics. ``sal``: 1 salient, 0 not
(the distilled map binarised at 0.5, as the survey does). ``normal``: unit vectors, the zero vector
= unlabelled: the survey keeps a distilled normal only on pixels whose PASCAL-Context class is one
of NYUv2's (``NORMALS_CLASSES``: the context class ids of the names that ``db_info/nyu_classes.json``
and ``db_info/context_classes.json`` share, plus tvmonitor), and so does this loader.

Edges are not read: the survey scores them with the optimal-dataset-scale F-measure of the MATLAB
SEISM toolbox (``evaluation/eval_edge.py``), which is out of scope here. Unlike the survey's
loader, images without persons are kept when human parts is the only task (they are unlabelled
and count nowhere).

Every item is ``{"image", TASK: label, ...}`` for the tasks asked (``tasks``, default all four):
image ImageNet-normalised float32 (3, H, W); ``seg``, ``human_parts``, ``sal`` int64 (H, W) with
255 = ignore; ``normal`` float32 (3, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fusionsearch.data.base import MultiTaskDataset, register_dataset
from fusionsearch.data.transforms import (
    IGNORE_INDEX,
    DataError,
    MissingDataError,
    as_hw,
    check_root,
    clean_normals,
    finish_item,
    read_lines,
)
from fusionsearch.errors import ArgumentError

__all__ = ["PASCALContext", "VOC_CLASSES", "PART_CLASSES", "PART_GROUPS", "NORMALS_CLASSES", "PASCAL_TASKS"]

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
PART_CLASSES = ("background", "head", "torso", "uarm", "larm", "uleg", "lleg")
# PASCAL-Part's person part names -> PART_CLASSES index (the survey's HUMAN_PART[6])
PART_GROUPS: dict[str, int] = {
    **dict.fromkeys(("hair", "head", "lear", "lebrow", "leye", "mouth", "nose", "rear", "rebrow", "reye"), 1),
    **dict.fromkeys(("neck", "torso"), 2),
    **dict.fromkeys(("luarm", "ruarm"), 3),
    **dict.fromkeys(("lhand", "llarm", "rhand", "rlarm"), 4),
    **dict.fromkeys(("luleg", "ruleg"), 5),
    **dict.fromkeys(("lfoot", "llleg", "rfoot", "rlleg"), 6),
}
PERSON_CLASS = 15  # PASCAL VOC's class index of person (``class_ind`` in PASCAL-Part)
# PASCAL-Context (459 classes) ids whose distilled normals the survey keeps: NYUv2 classes + tvmonitor
NORMALS_CLASSES = frozenset((
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49, 50, 51, 53, 55,
    56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101, 104, 105, 107, 111, 113, 115,
    122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165, 172, 174, 181, 183, 184, 191, 193, 195, 197,
    199, 202, 213, 215, 216, 219, 220, 223, 225, 228, 230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255,
    260, 261, 263, 269, 272, 273, 275, 281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304, 307, 309,
    310, 314, 315, 319, 323, 329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379,
    380, 383, 384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430, 432, 440,
    441, 442, 443, 444, 446, 454, 457,
))  # fmt: skip
PASCAL_TASKS: dict[str, int] = {"seg": len(VOC_CLASSES), "human_parts": len(PART_CLASSES), "sal": 1, "normal": 3}


def _task_subset(tasks: str | Sequence[str] | None) -> dict[str, int]:
    """``tasks`` (None: all; a comma-separated string or a list) as task -> output size."""
    if tasks is None:
        return dict(PASCAL_TASKS)
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in names if t not in PASCAL_TASKS]
    if unknown or not names:
        raise ArgumentError(f"PASCAL-Context tasks must be among {', '.join(PASCAL_TASKS)}, got {names!r}")
    return {t: PASCAL_TASKS[t] for t in PASCAL_TASKS if t in names}


def _read_ids(root: Path, split: str) -> list[str]:
    list_file = root / "ImageSets" / "Context" / f"{split}.txt"
    if not list_file.is_file():
        raise MissingDataError(f"PASCAL-Context: split list {str(list_file)!r} does not exist")
    ids = []
    for n, line in enumerate(read_lines(list_file), 1):
        stem = line.strip()
        if stem and (len(stem.split()) != 1 or "/" in stem):
            raise DataError(f"{str(list_file)!r} line {n}: expected one image id, got {line!r}")
        if stem:
            ids.append(stem)
    if not ids:
        raise DataError(f"PASCAL-Context: split list {str(list_file)!r} lists no image ids")
    return ids


def _read_png(path: Path, mode: str | None = None) -> np.ndarray:
    """A PNG or JPEG as an array (``mode``: converted first); unreadable -> DataError naming it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode) if mode else im)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {str(path)!r}: {e}") from e


def _loadmat(path: Path, key: str) -> Any:
    from scipy.io import loadmat  # scipy only here: keeps `import fusionsearch` light

    try:
        mat = loadmat(path)
    except (OSError, ValueError, NotImplementedError, TypeError) as e:
        raise DataError(f"cannot read {str(path)!r}: {e}") from e
    if key not in mat:
        names = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{str(path)!r} has no variable {key!r} (it has {names})")
    return mat[key]


def _check_hw(arr: np.ndarray, hw: tuple[int, ...], path: Path, what: str) -> np.ndarray:
    if arr.shape[:2] != hw:
        raise DataError(f"{what} {str(path)!r} has shape {arr.shape}, expected {hw} (the image's size)")
    return arr


def _semseg(path: Path, hw: tuple[int, ...]) -> Tensor:
    lab = _read_png(path)
    if lab.ndim != 2:
        raise DataError(f"segmentation {str(path)!r} has shape {lab.shape}: expected one channel of class indices")
    lab = _check_hw(lab, hw, path, "segmentation").astype(np.int64)
    return torch.from_numpy(np.where(lab < len(VOC_CLASSES), lab, IGNORE_INDEX))


def _person_parts(path: Path, hw: tuple[int, ...]) -> Tensor:
    """The 7-class part map of every person with parts; all 255 where no part is labelled."""
    target = np.zeros(hw, dtype=np.int64)
    try:
        objects = _loadmat(path, "anno")[0][0][1][0]
        for obj in objects:
            if int(np.asarray(obj[1]).reshape(-1)[0]) != PERSON_CLASS or len(obj[3]) == 0:
                continue
            for part in obj[3][0]:
                name = str(np.asarray(part[0]).reshape(-1)[0])
                if name not in PART_GROUPS:
                    raise DataError(f"{str(path)!r}: unknown person part {name!r}")
                mask = _check_hw(np.asarray(part[1]), hw, path, f"part {name!r} mask in").astype(bool)
                target[mask] = PART_GROUPS[name]
    except DataError:
        raise
    except (IndexError, TypeError, ValueError) as e:
        raise DataError(f"{str(path)!r} is not a PASCAL-Part annotation (anno.objects.parts): {e}") from e
    if not target.any():  # no person, or none with parts: unlabelled, not background
        target[:] = IGNORE_INDEX
    return torch.from_numpy(target)


def _saliency(path: Path, hw: tuple[int, ...]) -> Tensor:
    sal = _check_hw(_read_png(path, "L"), hw, path, "saliency")
    return torch.from_numpy((sal.astype(np.float32) / 255.0 > 0.5).astype(np.int64))


def _normals(path: Path, context: Path, hw: tuple[int, ...]) -> Tensor:
    rgb = _check_hw(_read_png(path, "RGB"), hw, path, "normals").astype(np.float32) * (2.0 / 255.0) - 1.0
    classes = _check_hw(np.asarray(_loadmat(context, "LabelMap")), hw, context, "LabelMap in")
    keep = np.isin(classes, sorted(NORMALS_CLASSES))
    normal = torch.from_numpy(np.ascontiguousarray((rgb * keep[..., None]).transpose(2, 0, 1)))
    return clean_normals(normal)


@register_dataset("pascal_context")
class PASCALContext(MultiTaskDataset):
    """PASCAL-Context (the survey's PASCAL_MT): seg, human parts, saliency and normals.

    PASCAL-Context seg + human parts + saliency + normals (the survey's PASCAL_MT); see the
    module docstring.

    ``tasks`` (a list or "seg,sal"; default all four) reads only those labels' files; ``size``
    resizes every item to (H, W) (None keeps the native size); ``augment`` (default: on for the
    train split) flips left-right with p = 0.5 from torch's global RNG, which the training loader
    seeds per item; ``length`` keeps the first N images of the split.
    """

    tasks: dict[str, int] = dict(PASCAL_TASKS)

    @staticmethod
    def tasks_for(tasks: str | Sequence[str] | None = None, **_: object) -> dict[str, int]:
        """The labels this set provides (``tasks`` narrows them), without reading files."""
        return _task_subset(tasks)

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        size: int | tuple[int, int] | None = None,
        augment: bool | None = None,
        length: int | None = None,
        tasks: str | Sequence[str] | None = None,
    ) -> None:
        self.root = check_root(root, "PASCAL-Context")
        if length is not None and length < 1:
            raise ArgumentError(f"length must be positive, got {length}")
        self.tasks = _task_subset(tasks)
        self.split = split
        ids = _read_ids(self.root, split)
        self.ids = ids[:length] if length is not None else ids
        self.files = [self._files(i) for i in self.ids]
        self.size = as_hw(size)
        self.augment = split == "train" if augment is None else bool(augment)

    def _files(self, stem: str) -> dict[str, Path]:
        """The files of one image id for the tasks asked; MissingDataError naming the first absent."""
        r = self.root
        files = {"image": r / "JPEGImages" / f"{stem}.jpg"}
        if "seg" in self.tasks:
            voc = r / "semseg" / "VOC12" / f"{stem}.png"
            files["seg"] = voc if voc.is_file() else r / "semseg" / "pascal-context" / f"{stem}.png"
        if "human_parts" in self.tasks:
            files["human_parts"] = r / "human_parts" / f"{stem}.mat"
        if "sal" in self.tasks:
            files["sal"] = r / "sal_distill" / f"{stem}.png"
        if "normal" in self.tasks:
            files["normal"] = r / "normals_distill" / f"{stem}.png"
            files["context"] = r / "pascal-context" / "trainval" / f"{stem}.mat"
        for kind, path in files.items():
            if not path.is_file():
                raise MissingDataError(f"PASCAL-Context image {stem!r} has no {kind}: {str(path)!r} does not exist")
        return files

    def __len__(self) -> int:
        return len(self.ids)

    def item_ids(self) -> list[str]:
        """Each image's id as the split list gives it (``data.labelled`` lists them)."""
        return list(self.ids)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self.ids):
            raise IndexError(f"index {index} out of range for {len(self.ids)} PASCAL-Context images")
        item = self.load(index)
        return finish_item(item, self.size, self.augment)

    def load(self, index: int) -> dict[str, Tensor]:
        """Image ``index`` at its native size, still in [0, 1]: no resize, flip or normalisation."""
        f = self.files[index]
        image = _read_png(f["image"], "RGB")
        hw = image.shape[:2]
        item = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0}
        if "seg" in self.tasks:
            item["seg"] = _semseg(f["seg"], hw)
        if "human_parts" in self.tasks:
            item["human_parts"] = _person_parts(f["human_parts"], hw)
        if "sal" in self.tasks:
            item["sal"] = _saliency(f["sal"], hw)
        if "normal" in self.tasks:
            item["normal"] = _normals(f["normal"], f["context"], hw)
        return item
