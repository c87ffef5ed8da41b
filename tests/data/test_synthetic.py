"""The built-in synthetic scenes: deterministic, exact geometry, consistent labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusionsearch.data import get_dataset
from fusionsearch.data.synthetic import CLASSES, render_scene
from fusionsearch.errors import FusionSearchError


def test_deterministic_by_seed_and_split():
    a = get_dataset("synthetic", split="train", length=4, size=48, seed=3)
    b = get_dataset("synthetic", split="train", length=4, size=48, seed=3)
    for key in ("image", "seg", "normal", "depth"):
        assert torch.equal(a[2][key], b[2][key])
    assert not torch.equal(a[1]["image"], a[2]["image"])
    val = get_dataset("synthetic", split="val", length=4, size=48, seed=3)
    assert not torch.equal(a[0]["depth"], val[0]["depth"])


def test_shapes_and_unit_normals():
    item = get_dataset("synthetic", length=2, size=(40, 56))[1]
    assert item["image"].shape == (3, 40, 56) and item["seg"].shape == (40, 56)
    assert item["normal"].shape == (3, 40, 56) and item["depth"].shape == (1, 40, 56)
    assert item["seg"].dtype == torch.int64 and int(item["seg"].max()) < len(CLASSES)
    torch.testing.assert_close(item["normal"].norm(dim=0), torch.ones(40, 56), atol=1e-5, rtol=0)
    assert (item["depth"] > 0).all()


def _backproject(s) -> np.ndarray:
    h, w = s.depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([(u - s.K[0, 2]) / s.K[0, 0], (v - s.K[1, 2]) / s.K[1, 1], np.ones_like(u)], -1)
    return rays * s.depth[..., None].astype(np.float64)


@pytest.mark.parametrize("seed", range(6))
def test_normals_from_depth_agree_with_analytic(seed):
    s = render_scene(seed, 96, 96)
    p = _backproject(s)
    du = p[1:-1, 2:] - p[1:-1, :-2]
    dv = p[2:, 1:-1] - p[:-2, 1:-1]
    n = np.cross(du, dv)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n *= -np.sign((n * p[1:-1, 1:-1]).sum(-1, keepdims=True))  # face the camera
    seg = s.seg
    same = np.ones_like(seg[1:-1, 1:-1], dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            same &= seg[1 + dy : seg.shape[0] - 1 + dy, 1 + dx : seg.shape[1] - 1 + dx] == seg[1:-1, 1:-1]
    analytic = s.normal[1:-1, 1:-1].astype(np.float64)
    # also away from creases inside one class (room corners, box edges): analytic normal constant around
    flat = np.ones_like(same)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            nb = s.normal[1 + dy : s.normal.shape[0] - 1 + dy, 1 + dx : s.normal.shape[1] - 1 + dx]
            flat &= (nb * analytic).sum(-1) > 0.99
    mask = same & flat
    assert mask.mean() > 0.5
    angle = np.degrees(np.arccos(np.clip((n * analytic).sum(-1), -1, 1)))[mask]
    assert np.median(angle) < 5.0, np.median(angle)


@pytest.mark.parametrize("seed", range(4))
def test_class_masks_agree_with_geometry(seed):
    s = render_scene(seed, 64, 64)
    world = _backproject(s) @ s.R.T + s.eye
    normal_world = s.normal.astype(np.float64) @ s.R.T
    floor = s.seg == CLASSES.index("floor")
    np.testing.assert_allclose(world[floor][:, 1], 0.0, atol=1e-3)  # the floor is y = 0
    np.testing.assert_allclose(normal_world[floor], np.broadcast_to([0.0, 1.0, 0.0], (floor.sum(), 3)), atol=1e-5)
    ceiling = s.seg == CLASSES.index("ceiling")
    if ceiling.any():
        np.testing.assert_allclose(normal_world[ceiling][:, 1], -1.0, atol=1e-5)
    wall = s.seg == CLASSES.index("wall")
    np.testing.assert_allclose(normal_world[wall][:, 1], 0.0, atol=1e-5)  # walls are vertical
    objects = s.seg >= CLASSES.index("box")
    assert (world[objects][:, 1] >= -1e-3).all()  # objects stand on the floor


def test_every_class_appears():
    counts = sum(np.bincount(render_scene(seed, 48, 48).seg.ravel(), minlength=len(CLASSES)) for seed in range(20))
    assert (counts > 0).all(), dict(zip(CLASSES, counts))


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        get_dataset("synthetic", split="training")
    with pytest.raises(IndexError):
        get_dataset("synthetic", length=2)[5]
    with pytest.raises(FusionSearchError, match="unknown data set 'nyu'; registered: .*imdb_wiki, nyuv2, .*synthetic"):
        get_dataset("nyu")
