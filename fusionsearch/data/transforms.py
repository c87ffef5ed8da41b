"""What every data set shares: ImageNet normalisation, the item resize and flip, and the data errors.

Dense items are ``{"image", TASK: label, ...}`` tensors (see ``SyntheticScenes``), one label per
task under the task's name. The helpers resize and flip each label by its task's label kind
(``tasks.LABEL_KINDS``), never by the name, keeping each kind's conventions: an index map's 255 =
ignore, a vector map's unit vectors with the zero vector = unlabelled, a scalar map's 0 = invalid.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from fusionsearch.errors import DataError, MissingDataError
from fusionsearch.tasks.task import CLASS, INDEX_MAP, SCALAR_MAP, VECTOR_MAP

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataError",
    "MissingDataError",
    "as_hw",
    "check_root",
    "clean_depth",
    "clean_normals",
    "hflip_dense",
    "normalize_image",
    "resize_dense",
    "resize_image",
]

IGNORE_INDEX = 255
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

# A stored normal is a unit vector, or (near) zero where unlabelled; anything shorter than this is
# treated as unlabelled, which also covers 8-bit encodings whose "zero" decodes to ~0.004.
_MIN_NORMAL_NORM = 0.5


def check_root(root: str | Path, what: str) -> Path:
    """``root`` as a Path, or MissingDataError naming it: every loader's first check."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise MissingDataError(f"{what} root {str(path)!r} does not exist or is not a folder")
    return path


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


def _resize_masked(x: Tensor, valid: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Bilinear over valid pixels only: invalid pixels (zeros) would otherwise drag depths toward 0
    and shorten normals at every hole's border. A target pixel stays valid where at least half its
    interpolation weight lies on valid source pixels."""
    w = valid.to(x.dtype)[None]
    num = F.interpolate((x * w)[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    den = F.interpolate(w[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0]
    ok = den >= 0.5
    return torch.where(ok, num / den.clamp_min(1e-6), torch.zeros_like(num)), ok


def _kind(key: str) -> str:
    from fusionsearch.tasks.task import TASKS

    cls = TASKS.get(key) if key in TASKS else None
    if cls is None:
        raise DataError(
            f"item key {key!r} is not a registered task: its label kind (index_map, scalar_map, vector_map, class)"
            " says how to resize and flip it; register a Task of that name"
        )
    return cls.label


def resize_label(label: Tensor, kind: str, size: tuple[int, int]) -> Tensor:
    """One label resized to (H, W) by its kind: an index map nearest (classes must not blend), a
    scalar or vector map bilinear over its labelled pixels (zeros would drag depths toward 0 and
    shorten normals at every hole's border), a vector map renormalised; a class label unchanged."""
    if kind == INDEX_MAP:
        return F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(label.dtype)
    if kind == SCALAR_MAP:
        return _resize_masked(label, label[0] > 0, size)[0]
    if kind == VECTOR_MAP:
        v, ok = _resize_masked(label, label.norm(dim=0) > _MIN_NORMAL_NORM, size)
        return F.normalize(v, dim=0) * ok
    return label


def flip_label(label: Tensor, kind: str) -> Tensor:
    """One label mirrored left-right by its kind. A mirrored vector field points the other way
    in x, so a vector map's channel 0 (the image's horizontal axis) changes sign; maps just move."""
    if kind == CLASS:
        return label
    out = label.flip(-1)
    if kind == VECTOR_MAP:
        sign = torch.ones(out.shape[0], 1, 1, dtype=out.dtype)
        sign[0] = -1
        out = out * sign
    return out


def resize_dense(item: dict[str, Tensor], size: tuple[int, int]) -> dict[str, Tensor]:
    """Resize a dense item to (H, W): the image bilinear (antialiased), each label by its task's
    label kind (``resize_label``)."""
    if tuple(item["image"].shape[-2:]) == size:
        return item
    out = {"image": resize_image(item["image"], size)}
    for key, value in item.items():
        if key != "image":
            out[key] = resize_label(value, _kind(key), size)
    return out


def hflip_dense(item: dict[str, Tensor]) -> dict[str, Tensor]:
    """Mirror left-right: the image, and each label by its task's label kind (``flip_label``)."""
    return {k: v.flip(-1) if k == "image" else flip_label(v, _kind(k)) for k, v in item.items()}


def clean_normals(normal: Tensor) -> Tensor:
    """(3, H, W) -> unit vectors where labelled, exact zeros elsewhere (also NaNs from bad pixels)."""
    normal = torch.nan_to_num(normal, nan=0.0, posinf=0.0, neginf=0.0)
    valid = normal.norm(dim=0, keepdim=True) > _MIN_NORMAL_NORM
    return F.normalize(normal, dim=0) * valid


def clean_depth(depth: Tensor) -> Tensor:
    """Depth with every unusable value (negative, NaN, inf) set to 0 = invalid."""
    depth = torch.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0)
    return depth.clamp_min(0.0)
