"""The ``points`` label kind and the ``landmarks`` task: resize and flip of points, the loss and
the NME over labelled points only, the head on maps and on tokens."""

from __future__ import annotations

import math

import pytest
import torch

from fusionsearch.errors import PlanError
from fusionsearch.graph.layouts import Layout
from fusionsearch.nets.heads import LayoutAdapter
from fusionsearch.tasks import LABEL_KINDS, TASKS
from fusionsearch.tasks.points import Landmarks, Points, landmark_nme

NAN = math.nan


def test_points_resize_and_flip_exact():
    kind = Points(flip_pairs=((0, 1), (3, 4)))
    pts = torch.tensor([[2.0, 4.0], [6.0, 5.0], [4.0, 7.0], [3.0, 9.0], [5.0, 10.0]])
    # (H, W) 12 x 8 -> 6 x 16: x doubles, y halves
    assert torch.equal(
        kind.resize(pts, (12, 8), (6, 16)),
        torch.tensor([[4.0, 2.0], [12.0, 2.5], [8.0, 3.5], [6.0, 4.5], [10.0, 5.0]]),
    )
    # mirrored (x -> 8 - x) and left/right swapped: the new left eye is the old right eye
    assert torch.equal(
        kind.flip(pts, 8),
        torch.tensor([[2.0, 5.0], [6.0, 4.0], [4.0, 7.0], [3.0, 10.0], [5.0, 9.0]]),
    )
    assert torch.equal(kind.flip(kind.flip(pts, 8), 8), pts)
    half = pts.clone()
    half[2] = NAN
    assert torch.isnan(kind.resize(half, (12, 8), (6, 16))[2]).all() and torch.isnan(kind.flip(half, 8)[2]).all()


def test_points_kind_contract():
    kind = LABEL_KINDS.get("points")(flip_pairs=[[0, 1]])
    assert kind == Points(flip_pairs=((0, 1),)) and kind != Points() and not kind.spatial
    batch = torch.stack([torch.ones(5, 2), kind.unlabelled_like(torch.ones(5, 2))])
    assert torch.isnan(batch[1]).all()
    one_point = batch[1].clone()
    one_point[3] = 1.0
    assert kind.labelled(torch.stack([batch[0], batch[1], one_point])).tolist() == [True, False, True]
    with pytest.raises(PlanError, match="each once"):
        Points(flip_pairs=((0, 1), (1, 2)))
    with pytest.raises(PlanError, match="the label has 2 points"):
        Points(flip_pairs=((0, 3),)).flip(torch.zeros(2, 2), 8)


def _pred(points: torch.Tensor, wh=(100.0, 100.0)) -> torch.Tensor:
    """A head's output for (B, P, 2) pixel points predicted on a W x H image."""
    size = torch.tensor(wh).expand(points.shape[0], 2)
    return torch.cat([points.flatten(1), size], 1)


def test_nme_hand_computed_and_failure_rate():
    target = torch.tensor(
        [
            [[10.0, 10.0], [20.0, 10.0], [15.0, 15.0], [12.0, 20.0], [18.0, 20.0]],  # eyes 10 px apart
            [[0.0, 0.0], [0.0, 20.0], [5.0, 5.0], [5.0, 10.0], [5.0, 15.0]],  # eyes 20 px apart
        ]
    )
    points = target.clone()
    points[0, 2] += torch.tensor([3.0, 4.0])  # one point 5 px off: mean error 1 px = 10 % of 10 px
    points[1, 0] += torch.tensor([0.0, 40.0])  # 40 px off over 5 points: 8 px = 40 % of 20 px
    task = Landmarks(out_channels=10)
    per_image = landmark_nme(points, target, torch.full((2, 2), 100.0), (0, 1))
    assert torch.allclose(per_image, torch.tensor([10.0, 40.0], dtype=torch.float64))
    task.update(_pred(points), target)
    out = task.compute()
    assert out["nme"] == pytest.approx(25.0) and out["failure_rate"] == pytest.approx(50.0)  # 10 % is not a failure
    diag = Landmarks(out_channels=10, norm_pair=None)
    diag.update(_pred(points[:1], (30.0, 40.0)), target[:1])
    assert diag.compute()["nme"] == pytest.approx(100 * 1.0 / 50.0)  # 1 px over the 50 px diagonal


def test_unlabelled_points_and_images_count_nowhere():
    torch.manual_seed(0)
    target = torch.rand(3, 5, 2) * 50
    target[1] = NAN  # an unlabelled image
    target[2, 4] = NAN  # an unlabelled point
    task = Landmarks(out_channels=10)
    pred = _pred(target.nan_to_num(25.0) + torch.randn(3, 5, 2)).requires_grad_(True)

    def measure(p: torch.Tensor) -> tuple[float, dict[str, float]]:
        task.reset()
        task.update(p, target)
        return task.loss(p, target).item(), task.compute()

    base = measure(pred)
    moved = pred.detach().clone()
    moved[1, :10] += 30.0  # the unlabelled image
    moved[2, 8:10] += 30.0  # the unlabelled point
    assert measure(moved) == base
    moved[2, 0] += 30.0  # a labelled point moves both
    after = measure(moved)
    assert after[0] > base[0] and after[1]["nme"] > base[1]["nme"]
    task.loss(pred, target).backward()
    assert pred.grad is not None and pred.grad[1].abs().sum() == 0 and pred.grad[2, 8:10].abs().sum() == 0
    nothing = torch.full((2, 5, 2), NAN)
    loss = task.loss(_pred(torch.zeros(2, 5, 2)).requires_grad_(True), nothing)
    assert loss.item() == 0.0 and math.isfinite(loss.item())


def test_loss_is_smooth_l1_on_image_normalised_coordinates():
    target = torch.zeros(1, 5, 2)
    points = target.clone()
    points[0, 0, 0] = 10.0  # 10 px on a 100 px wide image: 0.1, in smooth-L1's L1 range (beta 0.01)
    smooth = Landmarks(out_channels=10).loss(_pred(points), target)
    assert smooth.item() == pytest.approx((0.1 - 0.005) / 5)
    mse = Landmarks(out_channels=10, loss="mse").loss(_pred(points, (200.0, 100.0)), target)
    assert mse.item() == pytest.approx(0.05**2 / 5)
    with pytest.raises(PlanError, match="loss must be one of"):
        Landmarks(loss="l3")
    with pytest.raises(PlanError, match="norm_pair"):
        Landmarks(out_channels=10, norm_pair=(0, 5))
    with pytest.raises(PlanError, match="2 x the number of points"):
        Landmarks(out_channels=5)


@pytest.mark.parametrize("layout", [Layout.NCHW, Layout.NLC])
def test_head_pools_maps_and_tokens(layout):
    task = TASKS.get("landmarks")(out_channels=10)
    torch.manual_seed(0)
    head = LayoutAdapter(task.head(16), task.head_kind, layout)
    x = torch.randn(2, 16, 3, 4) if layout == Layout.NCHW else torch.randn(2, 12, 16)
    out = head(x, (64, 48))
    assert task.head_kind == "cls" and out.shape == (2, 12)
    points, size = task.split(out)
    assert points.shape == (2, 5, 2) and torch.equal(size, torch.tensor([[48.0, 64.0]] * 2))
    pooled = x.flatten(2).mean(-1) if layout == Layout.NCHW else x.mean(1)
    unit = head.body.fc(pooled).reshape(2, 5, 2) + 0.5
    assert torch.allclose(points, unit * torch.tensor([48.0, 64.0]))
