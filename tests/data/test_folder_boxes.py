"""A folder's box tasks: per-image JSON files and COCO JSON, absent = unlabelled, present without
boxes = a labelled negative, class counts, data check's object counts, problems naming the file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fusionsearch.data import collate_for
from fusionsearch.data.categories import count_from_items
from fusionsearch.data.folder import FolderData, scan
from fusionsearch.data.folder_check import check_folder
from fusionsearch.data.transforms import hflip_dense
from fusionsearch.errors import DataError
from fusionsearch.report.data_check import folder_tables
from fusionsearch.search.categories import per_category_lines
from fusionsearch.tasks.box_attributes import BoxAttributes
from fusionsearch.tasks.boxes import BOXES
from fusionsearch.tasks.detection import Detection
from tests.folder_fixture import write_folder

YAML = "det: {classes: [cat, dog]}\nbox_attr: {task: box_attr, source: det, attributes: [red, big]}\n"


def _per_image(root: Path) -> Path:
    write_folder(root)
    (root / "det").mkdir()
    a0 = {"boxes": [[1, 2, 5, 8], [0, 0, 14, 10]], "labels": ["dog", 1], "attrs": [[1, 0], [-1, 1]]}
    (root / "det" / "a0.json").write_text(json.dumps(a0))
    (root / "det" / "a1.json").write_text(json.dumps({"boxes": [], "labels": []}))  # a labelled negative
    (root / "det" / "a4.json").write_text(json.dumps({"boxes": [[2, 2, 4, 4]], "labels": [2]}))  # no attrs
    with open(root / "tasks.yaml", "a") as f:
        f.write(YAML)
    return root


def test_per_image_json_boxes(tmp_path):
    root = _per_image(tmp_path)
    layout = scan(root)
    assert not layout.problems, layout.problems
    data = FolderData(root, split="train", size=None, augment=False)
    assert data.tasks["det"] == 2 and data.tasks["box_attr"] == 2
    assert data.label_kinds["det"] is BOXES and data.label_kinds["box_attr"] is BOXES
    a0 = data.load(0)
    assert torch.equal(a0["det"]["boxes"], torch.tensor([[1, 2, 5, 8], [0, 0, 14, 10.0]]))
    assert a0["det"]["labels"].tolist() == [2, 1] and a0["box_attr"]["attrs"].tolist() == [[1, 0], [-1, 1]]
    a1, a2 = data.load(1), data.load(2)
    assert bool(a1["det"]["labelled"]) and len(a1["det"]["boxes"]) == 0  # a file without boxes
    assert not bool(a2["det"]["labelled"]) and a2["box_attr"]["attrs"].shape == (0, 2)  # no file
    val = FolderData(root, split="val", size=None, augment=False)
    assert val.load(0)["box_attr"]["attrs"].tolist() == [[-1, -1]]  # boxes without attrs: unlabelled for them
    flipped = hflip_dense(a0, data.label_kinds)
    assert torch.equal(flipped["det"]["boxes"][0], torch.tensor([9, 2, 13, 8.0]))  # a0 is 14 wide
    sized = FolderData(root, split="train", size=(20, 28), augment=False)
    assert torch.equal(sized[0]["det"]["boxes"][0], torch.tensor([2, 4, 10, 16.0]))
    batch = collate_for(sized)([sized[0], sized[1]])
    assert isinstance(batch["det"], list) and len(batch["det"]) == 2


def test_data_check_counts_objects(tmp_path):
    report = check_folder(_per_image(tmp_path))
    assert report.ok, report.problems
    det = next(r for r in report.tasks if r.name == "det")
    assert det.objects == {"train": 2, "val": 1} and det.labelled == {"train": 2, "val": 1}
    assert det.seen == {"cat": 1, "dog": 2} and det.source == "det/"
    attrs = next(r for r in report.tasks if r.name == "box_attr")
    assert attrs.seen == {"red": 1, "big": 1}
    tables = folder_tables(report)
    assert tables[0].row_count == len(report.tasks)


def _coco(root: Path, annotations: list[dict] | None = None) -> Path:
    write_folder(root)
    coco = {
        "images": [
            {"id": 7, "file_name": "a0.png"},
            {"id": 8, "file_name": "a1.png"},
            {"id": 9, "file_name": "a4.png"},
        ],
        "annotations": annotations
        or [
            {"image_id": 7, "bbox": [1, 2, 4, 6], "category_id": 30, "attributes": [1, 0, 0]},
            {"image_id": 7, "bbox": [0, 0, 3, 3], "category_id": 10, "attributes": [0, 0, 1], "iscrowd": 1},
            {"image_id": 9, "bbox": [2, 2, 5, 5], "category_id": 30, "attributes": [0, 1, -1]},
        ],
        "categories": [{"id": 30, "name": "mug"}, {"id": 10, "name": "cup"}],
    }
    (root / "objects.json").write_text(json.dumps(coco))
    with open(root / "tasks.yaml", "a") as f:
        f.write("objects: {task: det}\n")
    return root


def test_coco_json_boxes(tmp_path):
    root = _coco(tmp_path)
    layout = scan(root)
    assert not layout.problems, layout.problems
    task = layout.tasks["objects"]
    assert task.names == ("cup", "mug") and task.size == 2 and task.n_attrs == 3  # category ids in order
    data = FolderData(root, split="train", size=None, augment=False)
    a0 = data.load(0)["objects"]
    assert torch.equal(a0["boxes"], torch.tensor([[1, 2, 5, 8], [0, 0, 3, 3.0]]))  # [x, y, w, h] -> xyxy
    assert a0["labels"].tolist() == [2, 1] and a0["difficult"].tolist() == [False, True]
    assert bool(data.load(1)["objects"]["labelled"]) and len(data.load(1)["objects"]["boxes"]) == 0
    assert not bool(data.load(2)["objects"]["labelled"])  # a2 is not among COCO's images
    report = check_folder(root)
    rep = next(r for r in report.tasks if r.name == "objects")
    assert rep.source == "objects.json" and rep.objects == {"train": 2, "val": 1} and rep.seen == {"mug": 2, "cup": 1}


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ([{"image_id": 5, "bbox": [0, 0, 1, 1], "category_id": 30}], "objects.json annotation 0: needs an image_id"),
        ([{"image_id": 7, "bbox": [0, 0, -1, 1], "category_id": 30}], "objects.json annotation 0 .*not \\[x1"),
        ([{"image_id": 7, "bbox": [0, 0, 1, 1], "category_id": 30, "attributes": [2]}], "attributes \\[2\\]"),
    ],
)
def test_bad_coco_entries_are_problems_naming_the_file(tmp_path, annotations, message):
    layout = scan(_coco(tmp_path, annotations))
    assert any(re.search(message, p) for p in layout.problems), layout.problems
    with pytest.raises(DataError, match="data check"):
        FolderData(tmp_path, split="train")


def test_bad_per_image_files_are_problems_naming_the_file(tmp_path):
    root = _per_image(tmp_path)
    (root / "det" / "a2.json").write_text(json.dumps({"boxes": [[5, 5, 2, 8]], "labels": ["bird"]}))
    (root / "det" / "zz.json").write_text("{}")
    problems = scan(root).problems
    assert any(p.startswith("det/a2.json box 0: box [5, 5, 2, 8]") for p in problems), problems
    assert any(p.startswith("det/a2.json box 0: label 'bird'") for p in problems), problems
    assert any("orphan label det/zz.json" in p for p in problems), problems


def test_train_names_box_categories_by_class_from_1_and_box_attr_by_attribute(tmp_path):
    data = FolderData(_per_image(tmp_path), split="train", size=None, augment=False)
    exp = SimpleNamespace(datasets=lambda: [data], tasks=lambda: {"det": Detection(2), "box_attr": BoxAttributes(2)})
    per = {"det": {"1": 50.0, "2": float("nan")}, "box_attr": {"0": 25.0, "1": 75.0}}
    lines = per_category_lines(SimpleNamespace(per_category=per), exp)
    assert lines == ["det per category: cat 50.0, dog -", "box_attr per category: red 25.0, big 75.0"]


def test_box_category_counts_are_keyed_as_per_category(tmp_path):
    data = FolderData(_per_image(tmp_path), split="train", size=None, augment=False)  # a0: a dog and a cat
    assert data.category_counts("det") == {"1": 1, "2": 1} == count_from_items(data, "det", BOXES, 2)
    attrs = count_from_items(data, "box_attr", BOXES, 2, attrs=True)
    assert data.category_counts("box_attr") == {"0": 1, "1": 1} == attrs  # a0's attrs: [1, 0], [-1, 1]


def test_data_check_shows_where_a_source_task_reads_its_boxes(tmp_path):
    det_folder = check_folder(_per_image(tmp_path / "folder"))
    assert next(r for r in det_folder.tasks if r.name == "box_attr").source == "det/"
    root = _coco(tmp_path / "coco")
    with open(root / "tasks.yaml", "a") as f:
        f.write("box_attr: {task: box_attr, source: objects}\n")
    report = check_folder(root)
    assert report.ok, report.problems
    assert next(r for r in report.tasks if r.name == "box_attr").source == "objects.json"
