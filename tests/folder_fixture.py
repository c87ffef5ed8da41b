"""A user's data folder written as the README documents it, shared by the data and CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZES = {"a0": (10, 14), "a1": (12, 12), "a2": (10, 14), "a3": (8, 10), "a4": (10, 14), "a5": (12, 12)}


def write_folder(root: Path, *, splits: bool = True) -> Path:
    """Six images of several sizes; ``seg`` (a registered dense task, PNG classes 0..2, 255 =
    ignore) on all but a3; ``shade`` (declared only in tasks.yaml: a depth as 16-bit PNG in mm);
    per-image ``quality`` (declared: cls, class names) and ``attr`` (two attributes) in labels.csv,
    with empty cells and a missing row as unlabelled."""
    rng = np.random.default_rng(0)
    for d in ("images", "seg", "shade", "splits"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i, (h, w) in SIZES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        if i != "a3":  # a3 is unlabelled for seg: no file
            seg = rng.integers(0, 3, (h, w)).astype(np.uint8)
            seg[0, 0] = 255
            Image.fromarray(seg).save(root / "seg" / f"{i}.png")
        shade = rng.integers(500, 5000, (h, w)).astype(np.uint16)
        shade[1, 1] = 0  # invalid
        Image.fromarray(shade).save(root / "shade" / f"{i}.png")
    (root / "labels.csv").write_text(
        "id,quality,attr.smile,attr.hat\na0,good,1,0\na1,bad,0,\na2,,1,1\na3,good,,\na4,bad,0,1\n"
    )  # a5 has no row: unlabelled for both
    (root / "tasks.yaml").write_text(
        "shade: {task: depth, encoding: png16, scale: 0.001}\nquality: {task: cls, classes: [bad, good]}\n"
    )
    if splits:
        (root / "splits" / "train.txt").write_text("a0\na1\na2\na3\n")
        (root / "splits" / "val.txt").write_text("# held out\na4\na5\n")
    return root
