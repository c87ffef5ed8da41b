"""The synthetic scenes' boxes: tight around each object's pixels, attributes as documented, rare
attributes rare, aligned after a flip and a resize, and the scenes without boxes unchanged."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from fusionsearch.data import collate_for, get_dataset
from fusionsearch.data.synthetic import render_scene
from fusionsearch.data.synthetic_boxes import BOX_ATTRIBUTES, BOX_CLASSES, scene_boxes
from fusionsearch.data.synthetic_dataset import SyntheticScenes
from fusionsearch.data.transforms import hflip_dense, resize_dense
from fusionsearch.errors import ArgumentError
from fusionsearch.tasks.boxes import BOXES
from fusionsearch.tasks.labels import IndexMap

# items 0..2 of SyntheticScenes(split="train", size=(40, 56), seed=5) as the code before boxes
# made them: sha256 of seg (exact) and the sums of image, normal, depth
BEFORE = [
    ("9bcdcdd390534702", -1793.066537, -1945.014933, 8048.276695),
    ("4ac1b4b4ba0a8846", 246.995635, -2293.292571, 3379.521213),
    ("9bfb87c972bbb56e", 2581.888447, -1684.625179, 4456.176965),
]


def test_scenes_without_boxes_are_unchanged():
    data = get_dataset("synthetic", split="train", length=3, size=(40, 56), seed=5)
    assert data.tasks == {"seg": 6, "normal": 3, "depth": 1}
    for i, (seg_hash, *sums) in enumerate(BEFORE):
        item = data[i]
        assert sorted(item) == ["depth", "image", "normal", "seg"]
        assert hashlib.sha256(item["seg"].numpy().tobytes()).hexdigest()[:16] == seg_hash
        got = [float(item[k].double().sum()) for k in ("image", "normal", "depth")]
        np.testing.assert_allclose(got, sums, rtol=1e-6)
    with_boxes = get_dataset("synthetic", split="train", length=3, size=(40, 56), seed=5, boxes=True)
    for i in range(3):
        a, b = data[i], with_boxes[i]
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("seed", range(8))
def test_boxes_are_tight_around_each_objects_pixels(seed):
    s = render_scene(seed, 48, 64)
    boxes, labels, attrs = scene_boxes(s)
    visible = [k for k in range(len(s.objects)) if (s.instances == k).any()]
    assert len(boxes) == len(visible) == len(labels) == len(attrs)
    assert attrs.shape[1] == len(BOX_ATTRIBUTES) and set(np.unique(attrs)) <= {0.0, 1.0}
    for box, label, k in zip(boxes, labels, visible):
        rows, cols = np.nonzero(s.instances == k)
        x1, y1, x2, y2 = box.astype(int)
        assert (cols >= x1).all() and (cols < x2).all() and (rows >= y1).all() and (rows < y2).all()
        assert cols.min() == x1 and cols.max() == x2 - 1 and rows.min() == y1 and rows.max() == y2 - 1
        assert (s.seg[rows, cols] == s.objects[k].kind).all()  # the class is the object's shape
        assert BOX_CLASSES[label - 1] == ("box", "sphere", "cylinder")[s.objects[k].kind - 3]


def test_attributes_are_the_documented_functions():
    checked = 0
    for seed in range(12):
        s = render_scene(seed, 48, 64)
        boxes, _, attrs = scene_boxes(s)
        visible = [k for k in range(len(s.objects)) if (s.instances == k).any()]
        for box, a, k in zip(boxes, attrs, visible):
            obj, on = s.objects[k], dict(zip(BOX_ATTRIBUTES, a.astype(bool)))
            area = (box[2] - box[0]) * (box[3] - box[1]) / (48 * 64)
            assert on["large"] == (area >= 0.15) and on["small"] == (area < 0.01)
            assert on["truncated"] == (box[0] == 0 or box[1] == 0 or box[2] == 64 or box[3] == 48)
            assert on["occluded"] == ((s.instances == k).sum() < 0.7 * obj.full)
            assert on["tall"] == (obj.height >= 1.0) and on["flat"] == (obj.height < 0.45)
            dist = np.hypot(obj.centre[0] - s.eye[0], obj.centre[1] - s.eye[2])
            assert on["near"] == (dist < 1.4) and on["far"] == (dist > 4.0)
            assert on["bright"] == (obj.tint.mean() > 1.15) and on["dark"] == (obj.tint.mean() < 0.85)
            assert on["reddish"] == (obj.tint[0] - max(obj.tint[1:]) > 0.3)
            checked += 1
    assert checked > 20


def test_rare_attributes_are_rare():
    attrs = np.concatenate([scene_boxes(render_scene(seed, 32, 32))[2] for seed in range(200)])
    share = dict(zip(BOX_ATTRIBUTES, attrs.mean(0)))
    assert len(attrs) > 400
    for name in ("far", "bright", "dark", "reddish", "bluish"):
        assert 0 < share[name] < 0.06, (name, share[name])
    for name in ("occluded", "truncated", "tall", "large"):
        assert share[name] > 0.15, (name, share[name])


def _with_instances(seed: int, hw: tuple[int, int]) -> dict:
    """An item holding the object index + 1 as an index map under ``seg`` and the boxes under ``det``."""
    s = render_scene(seed, *hw)
    boxes, labels, attrs = scene_boxes(s)
    from fusionsearch.tasks.boxes import make_boxes

    return {
        "image": torch.zeros(3, *hw),
        "seg": torch.from_numpy(s.instances + 1),
        "det": make_boxes(boxes, labels, attrs),
    }


def _boxes_of(instances: torch.Tensor) -> torch.Tensor:
    out = []
    for k in sorted(set(instances.unique().tolist()) - {0}):
        rows, cols = torch.nonzero(instances == k, as_tuple=True)
        out.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


@pytest.mark.parametrize("seed", range(4))
def test_flip_and_resize_keep_boxes_on_their_pixels(seed):
    kinds = {"seg": IndexMap(), "det": BOXES}
    item = _with_instances(seed, (24, 32))
    assert torch.equal(_boxes_of(item["seg"]), item["det"]["boxes"])
    flipped = hflip_dense(item, kinds)
    assert torch.equal(_boxes_of(flipped["seg"]), flipped["det"]["boxes"])
    bigger = resize_dense(item, (48, 64), kinds)  # an exact 2x: nearest keeps every pixel's block
    assert torch.equal(_boxes_of(bigger["seg"]), bigger["det"]["boxes"])
    assert torch.equal(bigger["det"]["attrs"], item["det"]["attrs"])


def test_dataset_items_counts_and_batches():
    data = SyntheticScenes(split="val", length=6, size=32, seed=1, boxes=True)
    assert data.tasks == {"seg": 6, "normal": 3, "depth": 1, "det": 3, "box_attr": len(BOX_ATTRIBUTES)}
    assert SyntheticScenes.tasks_for(boxes=True) == data.tasks and "det" not in SyntheticScenes.tasks_for()
    items = [data[i] for i in range(len(data))]
    for item in items:
        assert item["det"] is item["box_attr"] and bool(item["det"]["labelled"])
        assert item["det"]["attrs"].shape == (len(item["det"]["boxes"]), len(BOX_ATTRIBUTES))
    det = data.category_counts("det")
    assert list(det) == [str(c) for c in range(1, len(BOX_CLASSES) + 1)]  # keyed 1..C, as det's per_category
    assert sum(det.values()) == sum(len(i["det"]["labels"]) for i in items)
    attrs = data.category_counts("box_attr")
    assert list(attrs.values()) == torch.stack([i["det"]["attrs"].sum(0) for i in items]).sum(0).int().tolist()
    batch = collate_for(data)(items[:3])
    assert isinstance(batch["det"], list) and len(batch["det"]) == 3 and batch["seg"].shape == (3, 32, 32)
    with pytest.raises(ArgumentError, match="count categories of seg, and with boxes"):
        SyntheticScenes(length=2, size=32).category_counts("det")
