"""Bilinear resizing of NCHW maps: the three sampling conventions the papers' code and ports use,
and a deterministic form for GPU runs that must repeat bit for bit.

Every dense head upsamples its prediction to the image and the NDDR-Shortcut resizes each fusion
output, so the backward of this one operation runs on every step. On CUDA the backward of
``F.interpolate(mode="bilinear")`` (and of ``index_select``, the TF-legacy form's) accumulates with
atomic adds, whose order and so whose rounding change from run to run: two runs of the same plan
on the same seed then differ, and the pairing of plans (every plan against ``single`` trained on
the same draws) loses its exactness. Bilinear resizing is linear and separable, so under
``torch.use_deterministic_algorithms`` (``train.deterministic``) it is computed as two matrix
products, ``A_h @ x @ A_w^T``, whose backward is deterministic (cuBLAS with a fixed workspace).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fusionsearch.errors import PlanError

__all__ = ["RESIZES", "resize_bilinear", "interpolation_matrix"]

RESIZES = ("tf_legacy", "align_corners", "half_pixel")


def interpolation_matrix(n: int, out: int, mode: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The (out, n) matrix of 1-D bilinear weights under ``mode`` (each row: two neighbours),
    built on the CPU (a constant: no kernel choice matters) and moved to ``device``."""
    dst = torch.arange(out, dtype=torch.float64)
    if mode == "half_pixel":
        src = ((dst + 0.5) * (n / out) - 0.5).clamp(min=0)
    elif mode == "align_corners":
        src = dst * ((n - 1) / (out - 1)) if out > 1 else torch.zeros_like(dst)
    elif mode == "tf_legacy":
        src = dst * (n / out)
    else:
        raise PlanError(f"unknown resize {mode!r}: use {', '.join(RESIZES)}")
    lo = src.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    frac = src - lo
    m = torch.zeros(out, n, dtype=torch.float64)
    rows = torch.arange(out)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(device=device, dtype=dtype)


def resize_bilinear(x: Tensor, size: tuple[int, ...], mode: str = "half_pixel") -> Tensor:
    """Bilinear resize of an NCHW map under one of three sampling conventions, which differ:

    - ``tf_legacy``: TF 1.x ``tf.image.resize_bilinear(align_corners=False)``, the official NDDR
      code's: source = destination x in/out, no half-pixel offset, the last row repeated;
    - ``align_corners``: corners on corners (the PyTorch port's ``align_corners=True``);
    - ``half_pixel``: pixel centres (``F.interpolate(align_corners=False)``, torch's default).

    Under ``torch.use_deterministic_algorithms(True)`` the same weights are applied as two
    matrix products (see the module docstring), on any device, so the CPU tests run that path.
    """
    if tuple(x.shape[2:]) == tuple(size):
        return x
    if mode not in RESIZES:
        raise PlanError(f"unknown resize {mode!r}: use {', '.join(RESIZES)}")
    if torch.are_deterministic_algorithms_enabled():
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        ah = interpolation_matrix(x.shape[2], int(size[0]), mode, x.device, dtype)
        aw = interpolation_matrix(x.shape[3], int(size[1]), mode, x.device, dtype)
        return torch.matmul(torch.matmul(ah, x.to(dtype)), aw.t()).to(x.dtype)
    if mode == "half_pixel":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if mode == "align_corners":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    for dim, out in ((2, size[0]), (3, size[1])):
        n = x.shape[dim]
        src = torch.arange(out, dtype=torch.float64, device=x.device) * (n / out)
        lo = src.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        frac = (src - lo).to(x.dtype)
        shape = [1] * x.dim()
        shape[dim] = out
        a, b = x.index_select(dim, lo), x.index_select(dim, hi)
        x = a + (b - a) * frac.view(shape)
    return x
