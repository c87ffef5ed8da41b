"""What every data set shares: ImageNet normalisation, the item resize and flip, and the data errors.

Items are ``{"image", TASK: label, ...}`` (see ``SyntheticScenes``), one label per task under the
task's name. The helpers resize and flip each label by its label kind (``tasks.labels``), never by
the name, keeping each kind's conventions: an index map's 255 = ignore, a vector map's unit vectors
with the zero vector = unlabelled, a scalar map's 0 = invalid.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fusionsearch.errors import DataError, MissingDataError
from fusionsearch.paths import read_input_text
from fusionsearch.tasks.labels import MIN_VECTOR_NORM, LabelKind

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataError",
    "MissingDataError",
    "as_hw",
    "check_shape",
    "check_root",
    "clean_depth",
    "clean_normals",
    "hflip_dense",
    "finish_item",
    "kind_of",
    "normalize_image",
    "resize_dense",
    "resize_image",
    "read_lines",
    "MAX_LIST_BYTES",
]

# a data set's list or label table grows with the data (CelebA's 200k rows of 40 attributes: ~20 MB)
MAX_LIST_BYTES = 1 << 30


def read_lines(path: Path) -> list[str]:
    """The lines of a data set's text file (a split list, a label table): a regular file under
    ``MAX_LIST_BYTES`` (``paths.read_input``), else a ``DataError`` naming it."""
    return read_input_text(path, repr(str(path)), MAX_LIST_BYTES, DataError).splitlines()


IGNORE_INDEX = 255
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def check_root(root: str | Path, what: str) -> Path:
    """``root`` as a Path, or MissingDataError naming it: every loader's first check."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise MissingDataError(f"{what} root {str(path)!r} does not exist or is not a folder")
    return path


def check_shape(arr: Any, shapes: tuple[tuple[int, ...], ...], path: str | Path, what: str) -> Any:
    """``arr`` if its shape is one of ``shapes`` (the image's size), else a DataError naming the file."""
    if tuple(arr.shape) not in shapes:
        want = " or ".join(str(s) for s in shapes)
        raise DataError(f"{what} {str(path)!r} has shape {tuple(arr.shape)}, expected {want} (the image's size)")
    return arr


def as_hw(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``size`` as (H, W); None stays None (keep the native size)."""
    if size is None:
        return None
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(hw) < 1:
        raise DataError(f"size must be positive, got {size!r}")
    return hw


def normalize_image(image: Tensor) -> Tensor:
    """(3, H, W) RGB in [0, 1] -> ImageNet-normalised, what timm's pretrained backbones expect."""
    return (image - IMAGENET_MEAN) / IMAGENET_STD


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear, antialiased when shrinking (so a 640 -> 128 resize doesn't alias)."""
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def kind_of(key: str, kinds: Mapping[str, LabelKind] | None = None) -> LabelKind:
    """The label kind of an item's key: ``kinds[key]`` where the data set says (its ``label_kinds``:
    a task declared under another name, a kind with the data's own parameters), else the kind of
    the registered task of that name."""
    from fusionsearch.tasks.task import TASKS

    if kinds and key in kinds:
        return kinds[key]
    if key not in TASKS:
        raise DataError(
            f"item key {key!r} is not a registered task: its label kind (fusionsearch list kinds) says how to"
            " resize, flip and batch it; register a Task of that name, or give the data set a label_kinds entry"
        )
    return TASKS[key].label


def resize_dense(
    item: dict[str, Any], size: tuple[int, int], kinds: Mapping[str, LabelKind] | None = None
) -> dict[str, Any]:
    """Resize an item to (H, W): the image bilinear (antialiased), each label by its kind
    (``LabelKind.resize``: an index map nearest, scalar and vector maps over their labelled pixels)."""
    src = tuple(item["image"].shape[-2:])
    if src == size:
        return item
    out = {"image": resize_image(item["image"], size)}
    for key, value in item.items():
        if key != "image":
            out[key] = kind_of(key, kinds).resize(value, src, size)
    return out


def hflip_dense(item: dict[str, Any], kinds: Mapping[str, LabelKind] | None = None) -> dict[str, Any]:
    """Mirror left-right: the image, and each label by its kind (``LabelKind.flip``: a vector map's
    x channel changes sign)."""
    width = int(item["image"].shape[-1])
    return {k: v.flip(-1) if k == "image" else kind_of(k, kinds).flip(v, width) for k, v in item.items()}


def finish_item(
    item: dict[str, Any],
    size: tuple[int, int] | None,
    augment: bool,
    kinds: Mapping[str, LabelKind] | None = None,
) -> dict[str, Any]:
    """What every loader does to an item read at its native size, image in [0, 1]: resize it to
    ``size`` (None keeps it), flip it left-right with p = 0.5 when ``augment`` (one draw from torch's
    global generator, which the training loader seeds per item), then normalise the image."""
    if size is not None:
        item = resize_dense(item, size, kinds)
    if augment and bool(torch.rand(()) < 0.5):
        item = hflip_dense(item, kinds)
    item["image"] = normalize_image(item["image"])
    return item


def clean_normals(normal: Tensor) -> Tensor:
    """(3, H, W) -> unit vectors where labelled, exact zeros elsewhere (also NaNs from bad pixels)."""
    normal = torch.nan_to_num(normal, nan=0.0, posinf=0.0, neginf=0.0)
    valid = normal.norm(dim=0, keepdim=True) > MIN_VECTOR_NORM
    return F.normalize(normal, dim=0) * valid


def clean_depth(depth: Tensor) -> Tensor:
    """Depth with every unusable value (negative, NaN, inf) set to 0 = invalid."""
    depth = torch.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0)
    return depth.clamp_min(0.0)
