"""Cityscapes (MTAN's pre-processed {i}.npy layout, as LibMTL reads it) on a tiny fixture written in that format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fusionsearch.cli import app
from fusionsearch.data import DATASETS, DataError, MissingDataError, PartialLabels, get_dataset
from fusionsearch.data.cityscapes import Cityscapes
from fusionsearch.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fusionsearch.errors import ArgumentError
from fusionsearch.experiment.experiment import Experiment
from fusionsearch.experiment.recipe import Recipe, load_recipe
from fusionsearch.tasks.task import task_class

H, W = 8, 12
runner = CliRunner()


def write_cityscapes(
    root: Path, counts: dict[str, int] | None = None, sets: tuple[str, ...] = ("label_7", "label_19")
) -> Path:
    """root/{split}/{image,label_7,label_19,depth}/{i}.npy as MTAN's release stores them: float32
    (H, W, 3) images in [0, 1], float32 (H, W) labels with -1 = unlabelled, float32 (H, W, 1)
    disparity with 0 = invalid. ``sets`` names the label folders (LibMTL's copy: ``label``)."""
    rng = np.random.default_rng(0)
    for split, n in (counts or {"train": 3, "val": 2}).items():
        for kind in ("image", "depth", *sets):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", rng.uniform(0, 1, size=(H, W, 3)).astype(np.float32))
            for folder in sets:
                classes = 19 if folder == "label_19" else 7
                label = rng.integers(0, classes, size=(H, W)).astype(np.float32)
                label[0, 0] = label[H - 1, :2] = -1.0  # unlabelled pixels
                np.save(root / split / folder / f"{i}.npy", label)
            disparity = rng.uniform(0.01, 0.2, size=(H, W)).astype(np.float32)
            disparity[:, 0] = 0.0  # an invalid column at the left edge
            disparity[2, 5] = 0.0
            np.save(root / split / "depth" / f"{i}.npy", disparity[..., None])
    return root


def _unnormalize(image: torch.Tensor) -> torch.Tensor:
    return image * IMAGENET_STD + IMAGENET_MEAN


def _raw(root: Path, folder: str, i: int = 1, split: str = "train") -> np.ndarray:
    return np.load(root / split / folder / f"{i}.npy")


def test_values_read_back(tmp_path):
    root = write_cityscapes(tmp_path)
    ds = Cityscapes(root, "train", augment=False)
    assert len(ds) == 3 and len(Cityscapes(root, "val")) == 2 and not Cityscapes(root, "val").augment
    assert ds.augment is False and Cityscapes(root).augment
    assert ds.tasks == {"seg": 7, "depth": 1, "seg19": 19} and ds.item_ids() == ["0", "1", "2"]
    item = ds[1]
    assert set(item) == {"image", "seg", "seg19", "depth"}
    assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.float32
    torch.testing.assert_close(_unnormalize(item["image"]), torch.from_numpy(_raw(root, "image")).permute(2, 0, 1))
    for key, folder in (("seg", "label_7"), ("seg19", "label_19")):
        raw = _raw(root, folder)
        assert item[key].shape == (H, W) and item[key].dtype == torch.int64
        assert item[key][0, 0] == 255 and (item[key][H - 1, :2] == 255).all() and int((item[key] == 255).sum()) == 3
        assert torch.equal(item[key][raw >= 0], torch.from_numpy(raw[raw >= 0]).long())
    assert item["seg"][item["seg"] != 255].max() < 7 and item["seg19"][item["seg19"] != 255].max() < 19
    assert item["depth"].shape == (1, H, W) and item["depth"].dtype == torch.float32
    torch.testing.assert_close(item["depth"][0], torch.from_numpy(_raw(root, "depth")[..., 0]))  # disparity as stored
    assert (item["depth"][0, :, 0] == 0).all() and item["depth"][0, 2, 5] == 0 and (item["depth"][0, :, 1:4] > 0).all()


def test_19_classes_and_the_libmtl_label_folder(tmp_path):
    root = write_cityscapes(tmp_path)
    ds = Cityscapes(root, "val", classes=19)
    assert ds.tasks == {"seg": 19, "depth": 1, "seg7": 7} and ds.classes[0] == "road"
    item = ds[0]
    assert torch.equal(item["seg"], Cityscapes(root, "val")[0]["seg19"])
    assert torch.equal(item["seg7"], Cityscapes(root, "val")[0]["seg"])
    # LibMTL's copy: label/ holds the 7 classes, no 19-class folder: seg and depth only
    libmtl = write_cityscapes(tmp_path / "libmtl", sets=("label",))
    ds7 = Cityscapes(libmtl, "train", augment=False)
    assert ds7.tasks == {"seg": 7, "depth": 1} and set(ds7[0]) == {"image", "seg", "depth"}
    raw = _raw(libmtl, "label", 0)
    assert torch.equal(ds7[0]["seg"][raw >= 0], torch.from_numpy(raw[raw >= 0]).long())
    with pytest.raises(MissingDataError, match=r"seg folder .*label_19'"):
        Cityscapes(libmtl, "train", classes=19)


def test_task_sets_without_files():
    assert Cityscapes.tasks_for() == {"seg": 7, "depth": 1, "seg19": 19}
    assert Cityscapes.tasks_for(classes=19, root="nowhere") == {"seg": 19, "depth": 1, "seg7": 7}
    assert Cityscapes.task_types_for() == {"seg19": "seg"} and Cityscapes.task_types_for(classes=19) == {"seg7": "seg"}
    with pytest.raises(ArgumentError, match="7 or 19, got 20"):
        Cityscapes.tasks_for(classes=20)
    assert DATASETS.get("cityscapes") is Cityscapes
    three = Recipe(tasks=["seg", "seg19", "depth"], data={"name": "cityscapes", "root": "nowhere", "size": [16, 32]})
    exp = Experiment(three)
    assert exp.task_sizes(read_data=False) == {"seg": 7, "seg19": 19, "depth": 1}
    assert exp.types == {"seg19": "seg"} and task_class("seg19", exp.types) is task_class("seg")
    assert set(exp.directions()["seg19"]) == {"miou", "pixel_acc"}


def test_experiment_builds_the_19_class_set(tmp_path):
    root = write_cityscapes(tmp_path)
    r = Recipe(tasks=["seg", "seg7", "depth"], data={"name": "cityscapes", "root": str(root), "classes": 19, "size": 8})
    tasks = Experiment(r).tasks()
    assert tasks["seg"].out_channels == 19 and tasks["seg7"].out_channels == 7
    assert type(tasks["seg7"]) is type(tasks["seg"])


def test_flip_moves_every_label_with_the_image(tmp_path):
    root = write_cityscapes(tmp_path)
    plain = Cityscapes(root, "train", augment=False)[0]
    ds = Cityscapes(root, "train", augment=True)
    flips = set()
    for seed in range(8):
        torch.manual_seed(seed)
        item = ds[0]
        flipped = torch.equal(item["image"], plain["image"].flip(-1))
        assert flipped or torch.equal(item["image"], plain["image"])
        flips.add(flipped)
        for key in ("seg", "seg19", "depth"):
            assert torch.equal(item[key], plain[key].flip(-1) if flipped else plain[key]), key
        if flipped:  # the -1 pixel at (0, 0) and the invalid left column are now at the right edge
            assert item["seg"][0, W - 1] == 255 and (item["depth"][0, :, W - 1] == 0).all()
    assert flips == {True, False}


def _seed_that_flips() -> int:
    """A seed after which the loader's one draw flips (p = 0.5)."""
    for seed in range(100):
        torch.manual_seed(seed)
        if bool(torch.rand(()) < 0.5):
            return seed
    raise AssertionError("no seed flips")


def test_resize_keeps_labels_on_their_pixels(tmp_path):
    root = write_cityscapes(tmp_path)
    plain = Cityscapes(root, "train", augment=False)[1]
    big = Cityscapes(root, "train", size=(2 * H, 2 * W), augment=False)[1]
    assert big["image"].shape == (3, 2 * H, 2 * W) and big["depth"].shape == (1, 2 * H, 2 * W)
    for key in ("seg", "seg19"):  # nearest: each pixel becomes a 2 x 2 block of its own class
        assert big[key].dtype == torch.int64
        for dy in (0, 1):
            for dx in (0, 1):
                assert torch.equal(big[key][dy::2, dx::2], plain[key]), (key, dy, dx)
    d = big["depth"][0]
    assert (d[:, 0] == 0).all()  # the invalid column stays invalid, at the left where the image has it
    valid = plain["depth"][plain["depth"] > 0]
    assert (d[d > 0] >= valid.min() - 1e-6).all() and (d[d > 0] <= valid.max() + 1e-6).all()
    # resize then flip is the flip of the resize
    torch.manual_seed(_seed_that_flips())
    both = Cityscapes(root, "train", size=(2 * H, 2 * W), augment=True)[1]
    for key in ("seg", "seg19", "depth"):
        assert torch.equal(both[key], big[key].flip(-1)), key


def test_errors_name_the_file(tmp_path):
    with pytest.raises(MissingDataError, match="Cityscapes root .*does not exist"):
        Cityscapes(tmp_path / "absent")
    root = write_cityscapes(tmp_path / "c", {"train": 2})
    with pytest.raises(MissingDataError, match=r"split folder .*val/image' does not exist"):
        Cityscapes(root, "val")
    with pytest.raises(ArgumentError, match="train or val"):
        Cityscapes(root, "test")
    with pytest.raises(ArgumentError, match="7 or 19"):
        Cityscapes(root, classes=8)
    (root / "train" / "label_19" / "1.npy").unlink()
    with pytest.raises(MissingDataError, match=r"image .*train/image/1.npy' has no seg19 label: .*label_19/1.npy'"):
        Cityscapes(root)
    np.save(root / "train" / "label_19" / "1.npy", np.zeros((H, W + 1), np.float32))
    with pytest.raises(DataError, match=r"seg19 label .*label_19/1.npy' has shape \(8, 13\), expected \(8, 12\)"):
        Cityscapes(root)[1]
    np.save(root / "train" / "image" / "0.npy", np.zeros((3, H, W), np.float32))  # channels first
    with pytest.raises(DataError, match=r"image .*image/0.npy' has shape \(3, 8, 12\), expected \(H, W, 3\)"):
        Cityscapes(root)[0]
    (root / "train" / "depth" / "1.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"cannot read .*depth/1.npy'"):
        Cityscapes(root).load(1)
    for path in (root / "train" / "depth").iterdir():
        path.unlink()
    (root / "train" / "depth").rmdir()
    with pytest.raises(MissingDataError, match=r"depth folder .*train/depth' does not exist"):
        Cityscapes(root)


def _moves(task, pred, target, where):
    """(loss, metrics) before and after ``pred`` changes only where ``where`` (pred's shape) is True."""
    bumped = pred.clone()
    bumped[where] += 3.0
    out = []
    for p in (pred, bumped):
        task.reset()
        task.update(p, target)
        out.append((float(task.loss(p, target)), task.compute()))
    return out


def test_partial_labels_add_nothing_to_loss_or_metrics(tmp_path):
    root = write_cityscapes(tmp_path, {"train": 4})
    data = Cityscapes(root, "train", augment=False)
    part = PartialLabels(data, {"seg19": ["1", "3"], "depth": ["0"]}, seed=0)
    assert part.counts() == {"seg19": (2, 4), "depth": (1, 4)}
    items = [part[i] for i in range(4)]
    for i, item in enumerate(items):
        assert bool((item["seg19"] != 255).any()) == (i in (1, 3))
        assert bool((item["depth"] > 0).any()) == (i == 0)
        assert torch.equal(item["seg"], data[i]["seg"])
    types = Cityscapes.task_types_for()
    seg19 = task_class("seg19", types)(out_channels=19)
    depth = task_class("depth", types)()
    g = torch.Generator().manual_seed(0)
    target = torch.stack([it["seg19"] for it in items])
    pred = torch.randn(4, 19, H, W, generator=g)
    unlabelled = (target == 255)[:, None].expand_as(pred)  # -1 pixels and the two unlabelled images
    (loss, metrics), (loss_b, metrics_b) = _moves(seg19, pred, target, unlabelled)
    assert loss == pytest.approx(loss_b) and metrics == pytest.approx(metrics_b)
    labelled = (target != 255)[:, None].expand_as(pred) & (torch.arange(19) == 0).view(1, 19, 1, 1)
    (loss, metrics), (loss_b, metrics_b) = _moves(seg19, pred, target, labelled)
    assert loss != pytest.approx(loss_b) and metrics != pytest.approx(metrics_b)

    target_d = torch.stack([it["depth"] for it in items])
    pred_d = torch.rand(4, 1, H, W, generator=g)
    (loss, metrics), (loss_b, metrics_b) = _moves(depth, pred_d, target_d, target_d == 0)
    assert loss == pytest.approx(loss_b) and metrics == pytest.approx(metrics_b)
    (loss, metrics), (loss_b, metrics_b) = _moves(depth, pred_d, target_d, target_d > 0)
    assert loss != pytest.approx(loss_b) and metrics["abs_err"] != pytest.approx(metrics_b["abs_err"])


def test_get_dataset_by_name(tmp_path):
    root = write_cityscapes(tmp_path)
    ds = get_dataset("cityscapes", root=str(root), split="val", length=1, size=(4, 6))
    assert len(ds) == 1 and ds[0]["seg"].shape == (4, 6) and ds[0]["depth"].shape == (1, 4, 6)


def test_recipe_loads_without_data():
    r = load_recipe("cityscapes_libmtl_resnet50")
    assert r.tasks == ["seg", "depth"] and r.data["name"] == "cityscapes" and r.image_size == (128, 256)
    assert Experiment(r).task_sizes(read_data=False) == {"seg": 7, "depth": 1}


@pytest.mark.parametrize("tasks", ["seg,depth", "seg,seg19,depth"])
def test_train_cli_on_the_fixture(tmp_path, tasks):
    root = write_cityscapes(tmp_path / "city")
    out = tmp_path / "m.json"
    args = ["train", "--data", f"cityscapes:{root}", "--tasks", tasks, "--backbone", "test_resnet", "--size", "32",
            "--steps", "2", "--train-images", "2", "--val-images", "2", "--batch-size", "2",
            "--save-metrics", str(out)]  # fmt: skip
    if "seg19" in tasks:
        args += ["--labelled", "seg19=0.5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert set(metrics) == set(tasks.split(","))
    assert set(metrics["seg"]) >= {"miou", "pixel_acc"} and set(metrics["depth"]) >= {"abs_err", "abs_rel"}
