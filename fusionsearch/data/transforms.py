"""What every data set shares: ImageNet normalisation, the item resize and flip, and the data errors.

Dense items are ``{"image", "seg", "normal", "depth"}`` tensors (see ``SyntheticScenes``); the helpers
here keep their conventions through a resize or a flip: ``seg`` 255 = ignore, ``normal`` unit vectors
with the zero vector = unlabelled, ``depth`` 0 = invalid.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError, MissingDataError

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


def resize_dense(item: dict[str, Tensor], size: tuple[int, int]) -> dict[str, Tensor]:
    """Resize a dense item to (H, W): bilinear image, nearest seg (labels must not blend), depth and
    normals bilinear over their valid pixels, normals renormalised to unit length."""
    if tuple(item["image"].shape[-2:]) == size:
        return item
    out = dict(item)
    out["image"] = resize_image(item["image"], size)
    if "seg" in item:
        seg = item["seg"][None, None].float()
        out["seg"] = F.interpolate(seg, size=size, mode="nearest-exact")[0, 0].long()
    if "depth" in item:
        depth = item["depth"]
        out["depth"], _ = _resize_masked(depth, depth[0] > 0, size)
    if "normal" in item:
        normal = item["normal"]
        n, ok = _resize_masked(normal, normal.norm(dim=0) > _MIN_NORMAL_NORM, size)
        out["normal"] = F.normalize(n, dim=0) * ok
    return out


def hflip_dense(item: dict[str, Tensor]) -> dict[str, Tensor]:
    """Mirror left-right. A mirrored surface faces the other way in x, so the normal's x component
    (channel 0, the camera's horizontal axis) changes sign; seg and depth just move."""
    out = {k: v.flip(-1) for k, v in item.items()}
    if "normal" in out:
        out["normal"] = out["normal"] * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
    return out


def clean_normals(normal: Tensor) -> Tensor:
    """(3, H, W) -> unit vectors where labelled, exact zeros elsewhere (also NaNs from bad pixels)."""
    normal = torch.nan_to_num(normal, nan=0.0, posinf=0.0, neginf=0.0)
    valid = normal.norm(dim=0, keepdim=True) > _MIN_NORMAL_NORM
    return F.normalize(normal, dim=0) * valid


def clean_depth(depth: Tensor) -> Tensor:
    """Depth with every unusable value (negative, NaN, inf) set to 0 = invalid."""
    depth = torch.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0)
    return depth.clamp_min(0.0)
