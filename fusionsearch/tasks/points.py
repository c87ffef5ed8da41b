"""Points on an image (facial landmarks): the ``points`` label kind and the ``landmarks`` task.

A ``points`` label is a (P, 2) float tensor of pixel coordinates (x, y), NaN where a point is not
labelled; an image is labelled where any point is. A resize scales x by W'/W and y by H'/H; a
left-right flip mirrors x (x -> W - x, the continuous-coordinate mirror of an image W pixels wide)
and swaps the points that trade sides (the left eye becomes the right eye), which the kind holds
as ``flip_pairs``: the data set that knows its points gives its own instance (``label_kinds``).

``landmarks`` regresses the points from pooled features. The head's linear layer predicts each
coordinate in units of the image's width or height (what TCDCN, Zhang et al. ECCV 2014, regresses),
so one set of weights serves every input size; it returns them in pixels, followed by the (W, H)
it was called with, so that the loss and metrics can normalise without being told the size: the
prediction is (B, 2P + 2), ``Landmarks.split`` takes it apart.

The loss is smooth-L1 (beta 0.01, i.e. 1 % of the image side) on those normalised coordinates,
over labelled points only: beyond 1 % it is L1, whose gradient does not fade as a point closes in
(it keeps pulling the last few pixels, which the NME counts, where MSE's gradient vanishes; Feng
et al., Wing loss, CVPR 2018, find L1 ahead of L2 for landmarks), and its L2 core keeps it smooth
at zero. ``loss: mse`` gives the mean squared error instead.

Metrics, pooled over the evaluation set (every image weighs the same, not every batch): ``nme``,
the mean over images of the mean point error divided by the distance between two reference points
of the ground truth, in % (CelebA's and TCDCN's inter-ocular normalisation: ``norm_pair`` (0, 1) =
the two eyes; ``norm_pair: null`` normalises by the image diagonal instead), and ``failure_rate``,
the % of images whose NME exceeds ``failure_threshold`` (10 %). An image counts where the
reference points and at least one other point are labelled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionsearch.errors import PlanError
from fusionsearch.tasks.labels import LabelKind, register_label_kind
from fusionsearch.tasks.task import Task, register_task

__all__ = ["Points", "POINTS", "LandmarkHead", "Landmarks", "landmark_nme"]

LOSSES = ("smooth_l1", "mse")
SMOOTH_L1_BETA = 0.01  # in units of the image side


@register_label_kind("points")
class Points(LabelKind):
    """Landmark coordinates, (P, 2) pixels (x, y), NaN = not labelled.

    (P, 2) pixel coordinates (x, y), NaN = not labelled; ``flip_pairs``: the (i, j) point
    indices that trade places in a left-right flip. Predicted from pooled features."""

    spatial = False

    def __init__(self, flip_pairs: Sequence[Sequence[int]] = ()) -> None:
        pairs = tuple((int(p[0]), int(p[1])) for p in flip_pairs)
        used = [i for p in pairs for i in p]
        if any(len(p) != 2 for p in flip_pairs) or min(used, default=0) < 0 or len(set(used)) != len(used):
            raise PlanError(f"flip_pairs must be pairs of distinct point indices >= 0, each once, got {flip_pairs!r}")
        self.flip_pairs = pairs

    def unlabelled_like(self, label: Tensor) -> Tensor:
        return torch.full_like(label, math.nan)

    def labelled(self, batch: Tensor) -> Tensor:
        return torch.isfinite(batch).reshape(batch.shape[0], -1).any(1)

    def resize(self, label: Tensor, src: tuple[int, int], dst: tuple[int, int]) -> Tensor:
        scale = torch.tensor([dst[1] / src[1], dst[0] / src[0]], dtype=label.dtype)
        return label * scale

    def flip(self, label: Tensor, width: int) -> Tensor:
        out = label.clone()
        out[..., 0] = width - out[..., 0]
        return out[..., self.permutation(out.shape[-2]), :]

    def permutation(self, n: int) -> list[int]:
        """The new order of ``n`` points after a flip: each pair swapped, the rest in place."""
        order = list(range(n))
        for i, j in self.flip_pairs:
            if max(i, j) >= n:
                raise PlanError(f"flip_pairs {self.flip_pairs} name point {max(i, j)}, but the label has {n} points")
            order[i], order[j] = j, i
        return order


POINTS = Points()
"""Landmark coordinates per image; see ``Points``."""


class LandmarkHead(nn.Module):
    """Pooled features (or tokens, averaged) -> a linear layer predicting each coordinate in units
    of the image side, started at the image centre; returns (B, 2P + 2): the points in pixels, then
    the (W, H) they are relative to."""

    def __init__(self, in_channels: int, out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, out)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        pooled = x.flatten(2).mean(-1) if x.dim() > 2 else x
        unit = self.fc(pooled) + 0.5
        wh = torch.tensor([float(size[1]), float(size[0])], device=unit.device, dtype=unit.dtype)
        pixels = unit.reshape(unit.shape[0], -1, 2) * wh
        return torch.cat([pixels.flatten(1), wh.expand(unit.shape[0], 2)], 1)


def landmark_nme(points: Tensor, target: Tensor, size: Tensor, norm_pair: tuple[int, int] | None) -> Tensor:
    """Per image (B,) float64: the mean distance of the labelled points to the ground truth divided
    by the distance between the ground truth's ``norm_pair`` points (the image diagonal when None),
    in %; NaN where the image has no labelled point or its reference distance is not labelled or 0."""
    points, target, size = points.double(), target.double(), size.double()
    keep = torch.isfinite(target).all(-1)
    err = torch.where(keep, (points - target.nan_to_num()).norm(dim=-1), 0.0)
    mean_err = err.sum(1) / keep.sum(1)
    pair = (target[:, norm_pair[0]] - target[:, norm_pair[1]]) if norm_pair is not None else size
    ref = pair.norm(dim=-1)  # the reference distance: the two points', or the image diagonal
    ok = keep.any(1) & torch.isfinite(ref) & (ref > 0)
    return torch.where(ok, 100 * mean_err / ref.nan_to_num(1.0).clamp_min(1e-12), math.nan)


@register_task("landmarks")
class Landmarks(Task):
    """Landmark regression: smooth-L1 on normalised coordinates; NME and failure rate.

    Landmark regression: smooth-L1 (or MSE) on image-normalised coordinates over labelled
    points; NME (% of the inter-ocular distance) and the failure rate at 10 % NME."""

    label: LabelKind = POINTS
    metrics = {"nme": False, "failure_rate": False}
    primary = "nme"

    def __init__(
        self,
        out_channels: int = 10,
        loss_weight: float = 1.0,
        loss: str = "smooth_l1",
        norm_pair: Sequence[int] | None = (0, 1),
        failure_threshold: float = 10.0,
    ) -> None:
        super().__init__(out_channels, loss_weight)
        if self.out_channels < 2 or self.out_channels % 2:
            raise PlanError(f"task 'landmarks': out_channels must be 2 x the number of points, got {out_channels}")
        if loss not in LOSSES:
            raise PlanError(f"task 'landmarks': loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        n = self.out_channels // 2
        if norm_pair is not None and (
            len(norm_pair) != 2 or norm_pair[0] == norm_pair[1] or not all(0 <= int(i) < n for i in norm_pair)
        ):
            raise PlanError(
                f"task 'landmarks': norm_pair must be two distinct point indices below {n}, got {norm_pair!r}"
            )
        if not 0 < failure_threshold < math.inf:
            raise PlanError(f"task 'landmarks': failure_threshold must be a number > 0, got {failure_threshold!r}")
        self.loss_name = loss
        self.norm_pair = None if norm_pair is None else (int(norm_pair[0]), int(norm_pair[1]))
        self.failure_threshold = float(failure_threshold)

    def head(self, in_channels: int) -> nn.Module:
        return LandmarkHead(in_channels, self.out_channels)

    def split(self, pred: Tensor) -> tuple[Tensor, Tensor]:
        """A head's output -> the points (B, P, 2) in pixels and the (B, 2) (W, H) they belong to."""
        return pred[:, :-2].reshape(pred.shape[0], -1, 2), pred[:, -2:]

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        points, size = self.split(pred.float())
        target = target.reshape(points.shape).to(points.dtype)
        keep = torch.isfinite(target).all(-1)
        err = (points - target.nan_to_num()) / size[:, None, :]
        if self.loss_name == "mse":
            per_point = err.square().sum(-1)
        else:
            per_point = F.smooth_l1_loss(err, torch.zeros_like(err), beta=SMOOTH_L1_BETA, reduction="none").sum(-1)
        return torch.where(keep, per_point, 0.0).sum() / keep.sum().clamp_min(1)

    def reset(self) -> None:
        self.nme: list[Tensor] = []

    def update(self, pred: Tensor, target: Tensor) -> None:
        points, size = self.split(pred.detach().float().cpu())
        nme = landmark_nme(points, target.detach().cpu().reshape(points.shape), size, self.norm_pair)
        self.nme.append(nme[~nme.isnan()])

    def compute(self) -> dict[str, float]:
        nme = torch.cat(self.nme) if self.nme else torch.zeros(0, dtype=torch.float64)
        if not len(nme):
            return {"nme": math.nan, "failure_rate": math.nan}
        return {"nme": nme.mean().item(), "failure_rate": 100 * (nme > self.failure_threshold).double().mean().item()}
