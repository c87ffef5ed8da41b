"""NYUv2 for multi-task learning (segmentation + surface normals + depth), in the two on-disk layouts the
multi-task literature distributes. ``layout=None`` picks the one found under ``root``.

``layout="mtan"``: the pre-processed NYUv2 of MTAN (lorenmt/mtan ``im2im_pred/create_dataset.py``, read
the same way by LibMTL ``examples/nyu/create_dataset.py``), 795 train / 654 val images at 288 x 384::

    root/{train,val}/image/{i}.npy    float (H, W, 3), RGB in [0, 1]
    root/{train,val}/label/{i}.npy    float (H, W), classes 0..12, -1 = unlabelled
    root/{train,val}/depth/{i}.npy    float (H, W, 1), metres, 0 = invalid
    root/{train,val}/normal/{i}.npy   float (H, W, 3), unit vectors in [-1, 1], zero vector = unlabelled

  13 classes: bed, books, ceiling, chair, floor, furniture, objects, picture, sofa, table, tv, wall,
  window. Label -1 becomes 255 (ignore).

``layout="nyud"``: NYUD_MT of the multi-task survey (SimonVandenhende/Multi-Task-Learning-PyTorch
``data/nyud.py``, after facebookresearch/astmt), the 40-class task of Gupta et al.::

    root/gt_sets/{train,val}.txt      one image id per line
    root/images/{id}.jpg              RGB, 8 bit
    root/segmentation/{id}.png        8 bit, 0 = void, k in 1..40 = class k - 1
    root/normals/{id}.npy             float (H, W, 3) in [-1, 1], zero vector = unlabelled
    root/depth/{id}.npy               float (H, W), metres, 0 = invalid

  Void becomes 255 (ignore) and class k becomes k - 1, as the survey code does (``0 -> 256``, then
  ``- 1``). The older ASTMT release of the same folder stored ``segmentation/{id}.mat`` (variable
  ``segmentation``, same values), ``normals/{id}.jpg`` (8 bit, n = 2 v / 255 - 1) and
  ``depth/{id}.mat`` (variable ``depth``); each is read when the .png / .npy is absent. ``edge/`` is
  not read.

Every item is ``{"image", "seg", "normal", "depth"}`` as in ``SyntheticScenes``: image ImageNet-normalised
float32 (3, H, W); seg int64 (H, W), 255 = ignore; normal float32 (3, H, W) unit vectors, zero vector =
unlabelled; depth float32 (1, H, W) in metres, 0 = invalid.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

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
    check_shape,
    clean_depth,
    clean_normals,
    finish_item,
    read_lines,
)
from fusionsearch.errors import ArgumentError

__all__ = ["NYUv2", "MTAN_CLASSES", "NYUD40_CLASSES", "LAYOUTS", "detect_layout"]

MTAN_CLASSES = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
    "picture", "sofa", "table", "tv", "wall", "window",
)  # fmt: skip
NYUD40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)  # fmt: skip
LAYOUTS: dict[str, tuple[str, ...]] = {"mtan": MTAN_CLASSES, "nyud": NYUD40_CLASSES}


class _Sample(NamedTuple):
    image: Path
    seg: Path
    normal: Path
    depth: Path


def detect_layout(root: Path) -> str:
    """``"nyud"`` if ``root/gt_sets`` exists, ``"mtan"`` if ``root/train/image`` or ``root/val/image`` does."""
    if (root / "gt_sets").is_dir():
        return "nyud"
    if any((root / s / "image").is_dir() for s in ("train", "val")):
        return "mtan"
    raise MissingDataError(
        f"no NYUv2 layout found under {str(root)!r}: expected {str(root / 'train' / 'image')!r} with "
        f"{{i}}.npy files (MTAN layout) or {str(root / 'gt_sets')!r} with train.txt / val.txt (NYUD layout)"
    )


def _mtan_samples(root: Path, split: str) -> list[_Sample]:
    image_dir = root / split / "image"
    if not image_dir.is_dir():
        raise MissingDataError(f"NYUv2 (MTAN layout): split folder {str(image_dir)!r} does not exist")
    stems = sorted(int(p.stem) for p in image_dir.glob("*.npy") if p.stem.isdigit())
    if not stems:
        raise MissingDataError(f"NYUv2 (MTAN layout): {str(image_dir)!r} holds no {{i}}.npy image files")
    samples = []
    for i in stems:
        paths = {kind: root / split / kind / f"{i}.npy" for kind in ("image", "label", "normal", "depth")}
        for kind in ("label", "normal", "depth"):
            if not paths[kind].is_file():
                raise MissingDataError(
                    f"NYUv2 image {str(paths['image'])!r} has no {kind}: {str(paths[kind])!r} does not exist"
                )
        samples.append(_Sample(paths["image"], paths["label"], paths["normal"], paths["depth"]))
    return samples


def _first_existing(folder: Path, stem: str, exts: tuple[str, ...], image: Path, kind: str) -> Path:
    for ext in exts:
        path = folder / f"{stem}{ext}"
        if path.is_file():
            return path
    tried = " or ".join(repr(str(folder / f"{stem}{e}")) for e in exts)
    raise MissingDataError(f"NYUv2 image {str(image)!r} has no {kind}: {tried} does not exist")


def _nyud_samples(root: Path, split: str) -> list[_Sample]:
    list_file = root / "gt_sets" / f"{split}.txt"
    if not list_file.is_file():
        raise MissingDataError(f"NYUv2 (NYUD layout): split list {str(list_file)!r} does not exist")
    ids = [line.strip() for line in read_lines(list_file) if line.strip()]
    if not ids:
        raise DataError(f"NYUv2 (NYUD layout): split list {str(list_file)!r} lists no image ids")
    samples = []
    for stem in ids:
        image = root / "images" / f"{stem}.jpg"
        if not image.is_file():
            raise MissingDataError(f"{str(list_file)!r} lists {stem!r} but {str(image)!r} does not exist")
        samples.append(
            _Sample(
                image,
                _first_existing(root / "segmentation", stem, (".png", ".mat"), image, "segmentation"),
                _first_existing(root / "normals", stem, (".npy", ".jpg", ".png"), image, "normals"),
                _first_existing(root / "depth", stem, (".npy", ".mat"), image, "depth"),
            )
        )
    return samples


def _read_array(path: Path, mat_key: str = "", rgb: bool = False) -> np.ndarray:
    """An array from .npy, .mat (variable ``mat_key``) or an image file (``rgb``: as 3-channel RGB);
    an unreadable file -> DataError naming it."""
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".mat":
            from scipy.io import loadmat  # scipy only for the .mat variants: keeps `import fusionsearch` light

            mat = loadmat(path)
        else:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB") if rgb else im)
    except (OSError, ValueError, NotImplementedError) as e:
        raise DataError(f"cannot read {str(path)!r}: {e}") from e
    if mat_key not in mat:
        names = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{str(path)!r} has no variable {mat_key!r} (it has {names})")
    return np.asarray(mat[mat_key])


def _seg_tensor(label: np.ndarray, offset: int, num_classes: int) -> Tensor:
    """Stored labels -> 0..num_classes-1 with everything else (void, -1, NaN, out of range) = 255."""
    lab = np.rint(label.astype(np.float64)) - offset
    keep = np.isfinite(lab) & (lab >= 0) & (lab < num_classes)
    return torch.from_numpy(np.where(keep, lab, IGNORE_INDEX).astype(np.int64))


@register_dataset("nyuv2")
class NYUv2(MultiTaskDataset):
    """NYUv2 seg + normals + depth from the MTAN or the NYUD (survey) layout; see the module docstring.

    ``size`` resizes every item to (H, W) (None keeps the native size); ``augment`` (default: on for
    the train split) flips left-right with p = 0.5 using torch's global RNG, which the training loader
    seeds per item (``train.item_seed``): the same flips for any number of loader workers and after a
    resume; ``length`` keeps the first N samples of the split.
    """

    tasks: dict[str, int] = {"seg": len(MTAN_CLASSES), "normal": 3, "depth": 1}  # per instance: by layout

    @staticmethod
    def tasks_for(layout: str | None = None, **_: object) -> dict[str, int]:
        """The labels a layout provides, without reading files (recipes build nets from this)."""
        if layout is None:
            raise ArgumentError(
                "the NYUv2 layout is found from the files: give layout: mtan or nyud to skip reading them"
            )
        if layout not in LAYOUTS:
            raise ArgumentError(f"layout must be one of {', '.join(LAYOUTS)} or None, got {layout!r}")
        return {"seg": len(LAYOUTS[layout]), "normal": 3, "depth": 1}

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        layout: str | None = None,
        size: int | tuple[int, int] | None = None,
        augment: bool | None = None,
        length: int | None = None,
    ) -> None:
        self.root = check_root(root, "NYUv2")
        if layout is not None and layout not in LAYOUTS:
            raise ArgumentError(f"layout must be one of {', '.join(LAYOUTS)} or None, got {layout!r}")
        if length is not None and length < 1:
            raise ArgumentError(f"length must be positive, got {length}")
        self.layout = layout or detect_layout(self.root)
        self.split = split
        samples = _mtan_samples(self.root, split) if self.layout == "mtan" else _nyud_samples(self.root, split)
        self.samples = samples[:length] if length is not None else samples
        self.classes = LAYOUTS[self.layout]
        self.num_classes = len(self.classes)
        self.tasks = {"seg": self.num_classes, "normal": 3, "depth": 1}
        self.size = as_hw(size)
        self.augment = split == "train" if augment is None else bool(augment)

    def __len__(self) -> int:
        return len(self.samples)

    def item_ids(self) -> list[str]:
        """Each sample's image file stem (``data.labelled`` lists them)."""
        return [s.image.stem for s in self.samples]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} NYUv2 samples")
        item = self.load(index)
        return finish_item(item, self.size, self.augment)

    def load(self, index: int) -> dict[str, Tensor]:
        """Sample ``index`` at its native size, image still in [0, 1]: no resize, flip or normalisation."""
        s = self.samples[index]
        image = _read_array(s.image, rgb=True)
        image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        hw = image.shape[:2]
        check_shape(image, ((*hw, 3),), s.image, "image")

        seg = check_shape(_read_array(s.seg, "segmentation"), (hw, (*hw, 1)), s.seg, "label").reshape(hw)
        offset = 1 if self.layout == "nyud" else 0  # nyud: 0 = void, k = class k - 1; mtan: -1 = void

        normal = check_shape(_read_array(s.normal, rgb=True), ((*hw, 3),), s.normal, "normal")
        if normal.dtype == np.uint8:  # 8-bit encoding of the ASTMT release
            normal = normal.astype(np.float32) * (2.0 / 255.0) - 1.0

        depth = check_shape(_read_array(s.depth, "depth"), (hw, (*hw, 1)), s.depth, "depth").reshape(hw)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "seg": _seg_tensor(seg, offset, self.num_classes),
            "normal": clean_normals(torch.from_numpy(np.ascontiguousarray(normal.transpose(2, 0, 1), np.float32))),
            "depth": clean_depth(torch.from_numpy(depth.astype(np.float32))[None]),
        }
