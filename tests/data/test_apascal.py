"""aPascal read from files in the release's format: objects grouped per image, boxes converted to
0-based pixel edges, all-zero attribute rows unlabelled, empty boxes dropped, bad lines named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fusionsearch.data import collate_for, get_dataset
from fusionsearch.data.apascal import APASCAL_ATTRIBUTES, APASCAL_CLASSES, APascal
from fusionsearch.data.transforms import hflip_dense
from fusionsearch.errors import DataError, MissingDataError


def _row(image: str, cls: str, box: tuple[int, int, int, int], on: tuple[int, ...] = ()) -> str:
    attrs = ["1" if a in on else "0" for a in range(64)]
    return " ".join([image, cls, *map(str, box), *attrs])


TRAIN = [
    _row("2008_000001.jpg", "person", (1, 1, 10, 20), (8, 16, 55)),
    _row("2008_000001.jpg", "dog", (20, 5, 39, 29), (6, 9, 56)),
    _row("2008_000001.jpg", "chair", (12, 18, 18, 30)),  # all zero: not annotated
    _row("2008_000002.jpg", "car", (3, 4, 30, 22), (1, 26, 52)),
    _row("2008_000002.jpg", "car", (31, 2, 31, 9), (1, 26)),  # one pixel wide: kept
    _row("2008_000002.jpg", "bus", (9, 9, 5, 12), (1,)),  # x2 < x1: no pixel, dropped
    _row("2008_000003.jpg", "horse", (2, 3, 40, 30), (9, 19)),  # an image with one object
]


def _write(root: Path, train: list[str] = TRAIN, val: list[str] | None = None) -> Path:
    folder = root / "attribute_data"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "apascal_train.txt").write_text("\n".join(train) + "\n")
    (folder / "apascal_test.txt").write_text("\n".join(val or TRAIN[-1:]) + "\n")
    images = root / "VOC2008" / "JPEGImages"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in (1, 2, 3):
        pixels = rng.integers(0, 255, size=(30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"2008_00000{k}.jpg")
    return root


def test_objects_grouped_per_image_with_boxes_as_pixel_edges(tmp_path):
    data = get_dataset("apascal", root=_write(tmp_path), split="train")
    assert isinstance(data, APascal) and len(data) == 3
    assert data.item_ids() == ["2008_000001", "2008_000002", "2008_000003"]
    assert data.tasks == {"det": 20, "box_attr": 64} and data.box_classes == APASCAL_CLASSES
    first = data.load(0)
    assert first["image"].shape == (3, 30, 40) and first["det"] is first["box_attr"]
    assert torch.equal(first["det"]["boxes"], torch.tensor([[0, 0, 10, 20], [19, 4, 39, 29], [11, 17, 18, 30.0]]))
    names = [APASCAL_CLASSES[k - 1] for k in first["det"]["labels"].tolist()]
    assert names == ["person", "dog", "chair"]
    attrs = first["det"]["attrs"]
    assert attrs.shape == (3, 64) and attrs[0].nonzero().flatten().tolist() == [8, 16, 55]
    assert (attrs[2] == -1).all()  # an all-zero row is unannotated, not "all absent"
    second = data.load(1)["det"]
    assert torch.equal(second["boxes"], torch.tensor([[2, 3, 30, 22], [30, 1, 31, 9.0]]))  # the empty box dropped
    assert any("1 object(s) with an empty box" in n for n in data.notes)
    assert any("1 object(s) with all attributes 0" in n for n in data.notes)
    third = data.load(2)["det"]
    assert len(third["boxes"]) == 1 and bool(third["labelled"])
    assert torch.equal(third["boxes"], torch.tensor([[1, 2, 40, 30.0]]))  # x2 = 40 is the image's edge


def test_items_resize_flip_and_batch(tmp_path):
    root = _write(tmp_path)
    data = APascal(root, split="train", size=(60, 80), augment=False)
    item = data[0]
    assert item["image"].shape == (3, 60, 80)
    assert torch.equal(item["det"]["boxes"][0], torch.tensor([0, 0, 20, 40.0]))  # 2x in both directions
    native = data.load(0)
    flipped = hflip_dense(native, data.label_kinds)
    assert torch.equal(flipped["det"]["boxes"][:2], torch.tensor([[30, 0, 40, 20], [1, 4, 21, 29.0]]))
    assert torch.equal(flipped["image"], native["image"].flip(-1))
    augmenting = APascal(root, split="train", augment=True)
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        seen.add(float(augmenting[0]["det"]["boxes"][0, 0]))
    assert seen == {0.0, 30.0}  # both the plain and the flipped box, never anything else
    batch = collate_for(data)([data[0], data[2]])
    assert isinstance(batch["det"], list) and len(batch["det"]) == 2 and batch["image"].shape == (2, 3, 60, 80)


def test_val_split_and_category_counts(tmp_path):
    root = _write(tmp_path)
    val = APascal(root, split="val")
    assert val.item_ids() == ["2008_000003"]
    train = APascal(root, split="train")
    det = train.category_counts("det")
    det = {APASCAL_CLASSES[int(c) - 1]: n for c, n in det.items()}  # keyed 1..C, as det's per_category
    assert list(det) == list(APASCAL_CLASSES) and det["car"] == 2 and det["bus"] == 0 and sum(det.values()) == 6
    attrs = {APASCAL_ATTRIBUTES[int(a)]: n for a, n in train.category_counts("box_attr").items()}
    assert list(attrs) == list(APASCAL_ATTRIBUTES)
    assert (
        attrs["3D Boxy"] == 2
        and attrs["Head"] == 1
        and attrs["Ear"] == 2
        and attrs["Wheel"] == 2
        and attrs["Round"] == 0
    )
    assert len(APascal(root, split="train", length=1)) == 1


def test_malformed_line_names_file_and_line(tmp_path):
    bad = [*TRAIN[:2], "2008_000001.jpg person 1 1 10", *TRAIN[2:]]
    with pytest.raises(DataError, match=r"apascal_train\.txt' line 3: 5 fields"):
        APascal(_write(tmp_path, bad), split="train")
    for line, message in [
        (_row("x.jpg", "unicorn", (1, 1, 2, 2)), "line 1: class 'unicorn'"),
        (TRAIN[0].replace(" 1 1 10 20 ", " 1 a 10 20 "), "line 1: the box"),
        (TRAIN[0][:-1] + "2", "line 1: attribute value '2'"),
    ]:
        (tmp_path / "attribute_data" / "apascal_train.txt").write_text(line + "\n")
        with pytest.raises(DataError, match=message):
            APascal(tmp_path, split="train")


def test_names_files_and_missing_images(tmp_path):
    root = _write(tmp_path)
    names = [f"attr{k}" for k in range(64)]
    (root / "attribute_data" / "attribute_names.txt").write_text("\n".join(names) + "\n")
    assert APascal(root, split="val").box_attributes == tuple(names)
    (root / "attribute_data" / "class_names.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="lists 2 classes"):
        APascal(root, split="val")
    (root / "attribute_data" / "class_names.txt").unlink()
    (root / "VOC2008" / "JPEGImages").rename(root / "elsewhere")
    with pytest.raises(MissingDataError, match="data.images"):
        APascal(root, split="val")
    assert len(APascal(root, split="val", images=root / "elsewhere")) == 1
