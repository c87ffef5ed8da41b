"""The ``folder`` data set: a user's own images and labels, laid out as the README documents, read
with no code; every malformation is one problem naming the file (and line)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from folder_fixture import SIZES, write_folder
from PIL import Image

from fusionsearch.data import PartialLabels
from fusionsearch.data.folder import FolderData, scan
from fusionsearch.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fusionsearch.errors import DataError, MissingDataError
from fusionsearch.experiment.recipe import Recipe
from fusionsearch.tasks.task import get_task


def test_the_layout_is_read_with_kinds_types_and_sizes(tmp_path):
    layout = scan(write_folder(tmp_path))
    assert not layout.problems, layout.problems
    assert set(layout.tasks) == {"seg", "shade", "quality", "attr"}
    assert {n: t.type for n, t in layout.tasks.items()} == {
        "seg": "seg", "shade": "depth", "quality": "cls", "attr": "attr"
    }  # fmt: skip
    assert FolderData.tasks_for(tmp_path) == {"seg": 3, "shade": 1, "quality": 2, "attr": 2}
    assert FolderData.task_types_for(tmp_path) == {"shade": "depth", "quality": "cls"}
    assert any("seg: 3 classes read from the labels" in n for n in layout.notes)
    assert layout.splits == {"train": ["a0", "a1", "a2", "a3"], "val": ["a4", "a5"]}


def test_items_hold_the_stored_values_and_unlabelled_means_the_kinds_value(tmp_path):
    root = write_folder(tmp_path)
    ds = FolderData(root, "train", size=None, augment=False)
    item = ds[0]
    raw = np.asarray(Image.open(root / "images" / "a0.png"), dtype=np.float32) / 255
    torch.testing.assert_close(item["image"] * IMAGENET_STD + IMAGENET_MEAN, torch.from_numpy(raw).permute(2, 0, 1))
    seg = torch.from_numpy(np.asarray(Image.open(root / "seg" / "a0.png")).astype(np.int64))
    assert torch.equal(item["seg"], seg) and item["seg"][0, 0] == 255
    shade = np.asarray(Image.open(root / "shade" / "a0.png")).astype(np.float32) * 0.001
    torch.testing.assert_close(item["shade"][0], torch.from_numpy(shade))
    assert item["shade"][0, 1, 1] == 0
    assert item["quality"].item() == 1 and item["attr"].tolist() == [1.0, 0.0]  # good = 1 of [bad, good]
    assert ds[1]["attr"].tolist() == [0.0, -1.0]  # an empty cell: that attribute unlabelled
    assert ds[2]["quality"].item() == -1
    a3 = ds[3]
    assert (a3["seg"] == 255).all() and a3["seg"].shape == (8, 10)  # no file: unlabelled
    val = FolderData(root, "val", size=None)
    assert val.item_ids() == ["a4", "a5"] and val[1]["quality"].item() == -1 and (val[1]["attr"] == -1).all()
    for t, kind in ds.label_kinds.items():
        assert kind.labelled(a3[t][None]).item() == (t not in ("seg", "attr")), t


def test_resize_and_flip_move_the_labels_with_the_pixels(tmp_path):
    root = write_folder(tmp_path)
    ds = FolderData(root, "train", size=(20, 28), augment=False)
    item = ds[0]
    assert item["image"].shape == (3, 20, 28) and item["seg"].shape == (20, 28) and item["shade"].shape == (1, 20, 28)
    native = FolderData(root, "train", size=None, augment=False)[0]
    assert torch.equal(item["seg"][::2, ::2], native["seg"])  # nearest, exactly x2
    flipped = FolderData(root, "train", size=None, augment=True)
    torch.manual_seed(0)
    for _ in range(10):  # p = 0.5: one of them flips
        out = flipped[0]
        if not torch.equal(out["seg"], native["seg"]):
            break
    assert torch.equal(out["seg"], native["seg"].flip(-1)) and torch.equal(out["shade"], native["shade"].flip(-1))
    assert torch.equal(out["attr"], native["attr"])


def test_without_splits_a_seeded_90_10_split(tmp_path):
    root = write_folder(tmp_path, splits=False)
    a, b = scan(root).splits, scan(root).splits
    assert a == b and len(a["val"]) == 1 and sorted(a["train"] + a["val"]) == sorted(SIZES)


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda r: (r / "seg" / "zz.png").write_bytes((r / "seg" / "a0.png").read_bytes()), "orphan label seg/zz.png"),
        (lambda r: (r / "images" / "a0.jpg").write_bytes(b"x"), "id 'a0' has two image files"),
        (lambda r: (r / "labels.csv").write_text("id,quality\na0,good\na0,bad\n"), "labels.csv line 3: id 'a0'"),
        (lambda r: (r / "labels.csv").write_text("id,attr.smile\na0,2\n"), "labels.csv line 2: attr.smile is '2'"),
        (lambda r: (r / "labels.csv").write_text("id,quality\na0,good,1\n"), "labels.csv line 2: 3 fields"),
        (lambda r: (r / "tasks.yaml").write_text("shade: {task: dpeth}\n"), "'dpeth' is not a registered task"),
        (lambda r: (r / "tasks.yaml").write_text("shade: [\n"), "tasks.yaml: not valid YAML"),
        (lambda r: (r / "splits" / "val.txt").write_text("a4\nnope\n"), "splits/val.txt line 2: no image"),
        (lambda r: (r / "splits" / "val.txt").write_text("a4\na0\n"), "in both train.txt and val.txt"),
    ],
)
def test_a_malformed_folder_is_one_line_naming_the_file(tmp_path, break_it, message):
    root = write_folder(tmp_path)
    break_it(root)
    assert any(message in p for p in scan(root).problems), scan(root).problems
    with pytest.raises(DataError, match="data check"):
        FolderData(root, "train")


def test_content_errors_name_the_file_when_read(tmp_path):
    root = write_folder(tmp_path)
    Image.fromarray(np.full((10, 14), 7, np.uint8)).save(root / "seg" / "a0.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "seg" / "a1.png")
    (root / "tasks.yaml").write_text("shade: {task: depth, encoding: png16}\nquality: {task: cls}\nseg: {classes: 3}\n")
    ds = FolderData(root, "train", size=None)
    with pytest.raises(DataError, match=r"seg/a0.png.*class 7, out of range for 3"):
        ds[0]
    with pytest.raises(DataError, match=r"seg/a1.png.*shape \(1, 5, 5\), its image is 12x12"):
        ds[1]
    with pytest.raises(MissingDataError, match="does not exist"):
        FolderData(tmp_path / "nope")


def test_unlabelled_images_add_nothing_to_the_loss_or_the_metrics(tmp_path):
    ds = FolderData(write_folder(tmp_path), "train", size=None, augment=False)
    attr = get_task("attr", out_channels=2)
    target = torch.stack([ds[i]["attr"] for i in range(4)])  # a1: hat unlabelled, a3: both
    pred = torch.randn(4, 2)
    wild = pred.clone()
    wild[1, 1], wild[3] = 50.0, -50.0  # only where there is no label
    assert torch.equal(attr.loss(pred, target), attr.loss(wild, target))
    attr.update(pred, target)
    before = attr.compute()
    attr.reset()
    attr.update(wild, target)
    assert attr.compute() == before
    assert attr.labelled(target).tolist() == [True, True, True, False]


def test_partial_labels_on_a_folder_and_a_recipe_reads_its_types(tmp_path):
    root = write_folder(tmp_path)
    ds = PartialLabels(FolderData(root, "train", size=None), {"quality": ["a0"]})
    assert [ds[i]["quality"].item() for i in range(4)] == [1, -1, -1, -1]
    r = Recipe(tasks=["seg", "quality", "shade"], data={"name": "folder", "root": str(root), "size": 16})
    assert r.task_types() == {"quality": "cls", "shade": "depth"}
    from fusionsearch.experiment.experiment import Experiment

    exp = Experiment(r)
    tasks = exp.tasks()
    assert type(tasks["quality"]).__name__ == "Classification" and tasks["quality"].out_channels == 2
    assert exp.directions()["shade"] == {"abs_err": False, "abs_rel": False, "rmse": False}
    assert exp.head_args() == {"quality": {"task": "cls"}, "shade": {"task": "depth"}}


def test_a_fifo_or_device_in_place_of_a_side_file_is_a_problem_not_a_hang(tmp_path):
    import os

    root = write_folder(tmp_path)
    (root / "labels.csv").unlink()
    os.mkfifo(root / "labels.csv")  # reading it would block for ever
    (root / "tasks.yaml").unlink()
    (root / "tasks.yaml").symlink_to("/dev/zero")  # reading it would fill the memory
    problems = scan(root).problems
    assert any(p.startswith("labels.csv: not a regular file") for p in problems), problems
    assert any(p.startswith("tasks.yaml: not a regular file") for p in problems), problems
