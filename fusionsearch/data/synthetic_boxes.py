"""Boxes, classes and attributes of the synthetic scenes' objects, derived from what a scene drew.

Every object with at least one visible pixel gets the tight box of its pixels in the ``boxes``
label kind's convention (``tasks.boxes``): xyxy in pixel edges, so pixel (row v, column u) lies in
the box when ``x1 <= u < x2`` and ``y1 <= v < y2``; a hidden object (no visible pixel) has no box.
Its class is its shape, 1..3 over ``BOX_CLASSES`` (0 is the background). Its attributes are 0/1
functions of the scene, with nothing drawn for them (``BOX_ATTRIBUTES``, in order)::

    large      its box covers >= 15% of the image
    small      its box covers < 1% of the image
    occluded   its visible pixels are < 70% of those it would cover with nothing in front
    truncated  its box touches the image border
    tall       it is >= 1.0 high (world units; the room is 2.4-3.2)
    flat       it is < 0.45 high
    near       its footprint's centre is < 1.4 from the camera (horizontally)
    far        its footprint's centre is > 4.0 from the camera
    bright     its tint (the factors its class colour was multiplied by) averages > 1.15
    dark       its tint averages < 0.85
    reddish    its tint's red factor exceeds both others by > 0.3
    bluish     its tint's blue factor exceeds both others by > 0.3

Their frequencies differ by an order of magnitude, the data-starved structure of aPascal's
attributes: over the ~1000 objects of 400 scenes at 64 x 64, ``truncated`` holds for about 60%,
``occluded``, ``tall`` and ``large`` for 25-35%, ``far``, ``bright``, ``dark``, ``reddish`` and
``bluish`` for 1.5-4% (``tests/data/test_synthetic_boxes.py`` checks the rare ones stay rare).
"""

from __future__ import annotations

import numpy as np

from fusionsearch.data.synthetic import CLASSES, Scene

__all__ = ["BOX_CLASSES", "BOX_ATTRIBUTES", "scene_boxes"]

BOX_CLASSES = ("box", "sphere", "cylinder")  # detection classes 1..3 (CLASSES 3..5)
BOX_ATTRIBUTES = (
    "large", "small", "occluded", "truncated", "tall", "flat", "near", "far", "bright", "dark", "reddish", "bluish",
)  # fmt: skip
_FIRST_OBJECT = CLASSES.index(BOX_CLASSES[0])


def scene_boxes(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The visible objects of ``scene`` as (boxes (n, 4) float32 xyxy pixel edges, labels (n,)
    int64 in 1..3, attrs (n, A) float32 0/1 over ``BOX_ATTRIBUTES``), in the order drawn."""
    assert scene.instances is not None, "a Scene from render_scene records its instances"
    h, w = scene.instances.shape
    boxes, labels, attrs = [], [], []
    for k, obj in enumerate(scene.objects):
        rows, cols = np.nonzero(scene.instances == k)
        if rows.size == 0:
            continue
        box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float32)
        area = float((box[2] - box[0]) * (box[3] - box[1])) / (h * w)
        dist = float(np.hypot(obj.centre[0] - scene.eye[0], obj.centre[1] - scene.eye[2]))
        tint = obj.tint
        values = (
            area >= 0.15,
            area < 0.01,
            rows.size < 0.7 * max(obj.full, rows.size),
            box[0] == 0 or box[1] == 0 or box[2] == w or box[3] == h,
            obj.height >= 1.0,
            obj.height < 0.45,
            dist < 1.4,
            dist > 4.0,
            tint.mean() > 1.15,
            tint.mean() < 0.85,
            tint[0] - max(tint[1], tint[2]) > 0.3,
            tint[2] - max(tint[0], tint[1]) > 0.3,
        )
        boxes.append(box)
        labels.append(obj.kind - _FIRST_OBJECT + 1)
        attrs.append(np.array(values, dtype=np.float32))
    n = len(boxes)
    return (
        np.stack(boxes) if n else np.zeros((0, 4), np.float32),
        np.array(labels, dtype=np.int64),
        np.stack(attrs) if n else np.zeros((0, len(BOX_ATTRIBUTES)), np.float32),
    )
