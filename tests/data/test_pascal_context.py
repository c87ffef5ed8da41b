"""PASCAL-Context (the multi-task survey's PASCAL_MT layout) on a fixture written in the real
format: JPEG images, PNG labels, PASCAL-Part .mat annotations as scipy.io writes MATLAB structs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from typer.testing import CliRunner

from fusionsearch.cli import app
from fusionsearch.data import DataError, MissingDataError, PartialLabels
from fusionsearch.data.pascal_context import NORMALS_CLASSES, PASCALContext
from fusionsearch.errors import ArgumentError
from fusionsearch.tasks.labels import IndexMap
from fusionsearch.tasks.pascal import HumanParts, Saliency

H, W = 8, 12
IDS = {"train": ["2008_000002", "2008_000003", "2008_000007"], "val": ["2008_000008", "2008_000009"]}
VALID_CTX, INVALID_CTX = min(NORMALS_CLASSES), 1  # a NYUv2 class (keeps its normal), one that does not


def _struct(fields: list[str], rows: list[tuple]) -> np.ndarray:
    """A 1 x N MATLAB struct array (np.zeros((0, 0)) for N = 0), as PASCAL-Part's files hold them."""
    if not rows:
        return np.zeros((0, 0))
    arr = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        arr[0, i] = row
    return arr


def _obj(cls: str, ind: int, mask: np.ndarray, parts: dict[str, np.ndarray]) -> tuple:
    rows = [(name, m.astype(np.uint8)) for name, m in parts.items()]
    return (cls, np.array([[ind]], np.uint8), mask.astype(np.uint8), _struct(["part_name", "mask"], rows))


def _box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


def write_part_mat(path: Path, stem: str, objects: list[tuple]) -> None:
    objs = _struct(["class", "class_ind", "mask", "parts"], objects)
    anno = np.zeros((1, 1), dtype=[("imname", object), ("objects", object)])
    anno[0, 0] = (stem, objs)
    savemat(path, {"anno": anno})


def _persons(k: int) -> list[tuple]:
    """Image k's objects: 0 a person with parts and a cat with parts; 1 a dog only (no person);
    2 a person without parts; others a person with one part."""
    person = _box(1, 7, 2, 8)
    if k == 0:
        parts = {
            "head": _box(1, 3, 3, 6),
            "neck": _box(2, 4, 3, 6),
            "llarm": _box(4, 6, 2, 4),
            "rfoot": _box(6, 7, 6, 8),
        }
        return [_obj("person", 15, person, parts), _obj("cat", 8, _box(0, 2, 9, 12), {"head": _box(0, 1, 9, 12)})]
    if k == 1:
        return [_obj("dog", 12, _box(2, 6, 2, 6), {})]
    if k == 2:
        return [_obj("person", 15, person, {})]
    return [_obj("person", 15, person, {"torso": _box(3, 5, 3, 7)})]


def write_pascal(root: Path) -> Path:
    """root/ in PASCAL_MT's layout; image k of each split gets the objects of ``_persons(k)``."""
    rng = np.random.default_rng(0)
    for d in ("ImageSets/Context", "JPEGImages", "semseg/VOC12", "semseg/pascal-context", "human_parts",
              "sal_distill", "normals_distill", "pascal-context/trainval"):  # fmt: skip
        (root / d).mkdir(parents=True, exist_ok=True)
    for split, ids in IDS.items():
        (root / "ImageSets/Context" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for k, stem in enumerate(ids):
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg")
            seg = rng.integers(0, 21, (H, W)).astype(np.uint8)
            seg[0, 0], seg[0, 1] = 255, 30  # void, and a value beyond the 21 classes
            if k == 0:  # VOC12 palette PNG, as VOC's SegmentationClass
                im = Image.fromarray(seg, mode="P")
                im.putpalette(list(rng.integers(0, 256, 768, dtype=np.uint8)))
                im.save(root / "semseg/VOC12" / f"{stem}.png")
            else:
                Image.fromarray(seg, mode="L").save(root / "semseg/pascal-context" / f"{stem}.png")
            write_part_mat(root / "human_parts" / f"{stem}.mat", stem, _persons(k))
            Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8), mode="L").save(
                root / "sal_distill" / f"{stem}.png"
            )
            n = rng.normal(size=(H, W, 3))
            n /= np.linalg.norm(n, axis=-1, keepdims=True)  # unit normals, encoded v = round((n + 1) * 127.5)
            Image.fromarray(np.round((n + 1) * 127.5).astype(np.uint8)).save(root / "normals_distill" / f"{stem}.png")
            ctx = np.full((H, W), VALID_CTX, np.uint16)
            ctx[:, :3] = INVALID_CTX
            savemat(root / "pascal-context/trainval" / f"{stem}.mat", {"LabelMap": ctx})
    return root


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return write_pascal(tmp_path / "PASCAL_MT")


def _png(path: Path, mode: str | None = None) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert(mode) if mode else im)


def test_values_read_back(root):
    ds = PASCALContext(root, "train", augment=False)
    assert len(ds) == 3 and ds.item_ids() == IDS["train"] and ds.tasks == PASCALContext.tasks
    assert ds.tasks == {"seg": 21, "human_parts": 7, "sal": 1, "normal": 3}
    raw = ds.load(0)
    stem = IDS["train"][0]
    image = torch.from_numpy(_png(root / "JPEGImages" / f"{stem}.jpg", "RGB").copy()).permute(2, 0, 1) / 255.0
    torch.testing.assert_close(raw["image"], image)
    item = ds[0]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(item["image"], (image - mean[:, None, None]) / std[:, None, None])
    for key, dtype in (("seg", torch.int64), ("human_parts", torch.int64), ("sal", torch.int64)):
        assert item[key].shape == (H, W) and item[key].dtype == dtype
    assert item["normal"].shape == (3, H, W) and item["normal"].dtype == torch.float32

    seg = _png(root / "semseg/VOC12" / f"{stem}.png").astype(np.int64)  # palette indices, not colours
    seg[0, :2] = 255
    assert item["seg"].tolist() == seg.tolist()
    seg1 = _png(root / "semseg/pascal-context" / f"{IDS['train'][1]}.png").astype(np.int64)
    seg1[0, :2] = 255
    assert ds[1]["seg"].tolist() == seg1.tolist()

    sal = _png(root / "sal_distill" / f"{stem}.png")
    assert item["sal"].tolist() == (sal >= 128).astype(np.int64).tolist()

    n = _png(root / "normals_distill" / f"{stem}.png", "RGB").astype(np.float32) * 2 / 255 - 1
    n = torch.nn.functional.normalize(torch.from_numpy(n).permute(2, 0, 1), dim=0)
    torch.testing.assert_close(item["normal"][:, :, 3:], n[:, :, 3:])
    assert (item["normal"][:, :, :3] == 0).all()  # a context class outside NYUv2's: unlabelled


def test_human_parts_grouping_and_persons_only(root):
    hp = PASCALContext(root, "train", augment=False).load(0)["human_parts"]
    expected = np.zeros((H, W), np.int64)
    for box, cls in ((_box(1, 3, 3, 6), 1), (_box(2, 4, 3, 6), 2), (_box(4, 6, 2, 4), 4), (_box(6, 7, 6, 8), 6)):
        expected[box] = cls  # later parts paint over earlier ones; the cat's head is not a person's
    assert hp.tolist() == expected.tolist()


def test_images_without_persons_are_unlabelled_for_human_parts(root):
    ds = PASCALContext(root, "train", augment=False, tasks=["human_parts"])
    no_person, no_parts = ds[1]["human_parts"], ds[2]["human_parts"]
    assert (no_person == 255).all() and (no_parts == 255).all()
    assert list(ds[0]) == ["image", "human_parts"]

    task = HumanParts()
    target = torch.stack([ds[0]["human_parts"], no_person])
    pred = torch.randn(2, 7, H, W, requires_grad=True)
    loss = task.loss(pred, target)
    loss.backward()
    assert pred.grad is not None and (pred.grad[1] == 0).all() and pred.grad[0].abs().sum() > 0
    assert task.labelled(target).tolist() == [True, False]
    task.update(pred, target)
    before = task.compute()
    moved = pred.detach().clone()
    moved[1] = torch.randn(7, H, W) * 10  # only the unlabelled image changes
    task.reset()
    task.update(moved, target)
    assert task.compute() == before and task.loss(moved, target).item() == pytest.approx(loss.item())
    moved[0] = torch.randn(7, H, W) * 10
    assert task.loss(moved, target).item() != pytest.approx(loss.item())
    assert HumanParts().loss(pred, target[1:].expand(2, H, W)).item() == 0.0


def _logit(p: list[float]) -> torch.Tensor:
    q = torch.tensor(p, dtype=torch.float64)
    return torch.log(q / (1 - q)).float()


def test_saliency_maxf_and_miou_by_hand():
    # image A: gt 1 1 0 0; image B: gt 1 0 (255) 0; image C unlabelled. At the lowest threshold 0.2,
    # A: P 2/3 R 1 IoU 2/3; B: P 1 R 1 IoU 1 -> mean P 5/6, R 1, IoU 5/6; F1 = 10/11 (the maximum).
    target = torch.tensor([[[1, 1, 0, 0]], [[1, 0, 255, 0]], [[255, 255, 255, 255]]])
    pred = torch.stack([_logit([0.95, 0.52, 0.52, 0.1]), _logit([0.32, 0.1, 0.99, 0.1]), _logit([0.9] * 4)])
    pred = pred.view(3, 1, 1, 4)
    task = Saliency()
    task.update(pred, target)
    got = task.compute()
    assert got["maxf"] == pytest.approx(100 * 10 / 11) and got["miou"] == pytest.approx(100 * 5 / 6)
    beta = Saliency(beta2=0.3)
    beta.update(pred, target)
    assert beta.compute()["maxf"] == pytest.approx(100 * 1.3 * 5 / 6 / (0.3 * 5 / 6 + 1))

    moved = pred.clone()
    moved[1, 0, 0, 2], moved[2] = -5.0, 3.0  # unlabelled pixel and image only
    again = Saliency()
    again.update(moved, target)
    assert again.compute() == pytest.approx(got) and task.loss(moved, target) == pytest.approx(task.loss(pred, target))
    moved[0, 0, 0, 1] = -5.0  # a labelled pixel moves them
    again.reset()
    again.update(moved, target)
    assert again.compute()["maxf"] != pytest.approx(got["maxf"])


def test_saliency_balanced_bce_by_hand():
    target = torch.tensor([[[1, 0, 0, 255]]])
    pred = torch.zeros(1, 1, 1, 4, requires_grad=True)
    w = 2 / 3  # the share of negatives among the labelled pixels weighs the positives
    expected = (w * math.log(2) + 2 * (1 - w) * math.log(2)) / 3
    loss = Saliency().loss(pred, target)
    assert loss.item() == pytest.approx(expected)
    assert Saliency(balanced=False).loss(pred, target).item() == pytest.approx(math.log(2))
    loss.backward()
    assert pred.grad is not None and pred.grad[0, 0, 0, 3] == 0
    assert Saliency().loss(pred, torch.full((1, 1, 4), 255)).item() == 0.0


def test_flip_and_resize_follow_the_image(root):
    ds = PASCALContext(root, "train", augment=True)
    raw = ds.load(0)
    flips = []
    for seed in range(6):
        torch.manual_seed(seed)
        item = ds[0]
        flipped = bool(torch.equal(item["seg"], raw["seg"].flip(-1))) and not torch.equal(item["seg"], raw["seg"])
        flips.append(flipped)
        ref = {k: v.flip(-1) for k, v in raw.items()} if flipped else dict(raw)
        if flipped:
            ref["normal"][0] = -ref["normal"][0]
        for key in ("seg", "human_parts", "sal"):
            assert torch.equal(item[key], ref[key])
        torch.testing.assert_close(item["normal"], ref["normal"])
    assert any(flips) and not all(flips)

    small = PASCALContext(root, "val", size=(4, 6), augment=False)
    item = small[1]
    assert item["image"].shape == (3, 4, 6) and item["seg"].shape == (4, 6) and item["normal"].shape == (3, 4, 6)
    full = small.load(1)
    assert torch.equal(item["seg"], IndexMap().resize(full["seg"], (H, W), (4, 6)))
    assert (item["human_parts"] == 255).all()  # val image 1 has no person: unlabelled at any size
    norms = item["normal"].norm(dim=0)
    assert torch.allclose(norms[norms > 0], torch.ones(()), atol=1e-5)


def test_partial_labels_by_image_id(root):
    ds = PASCALContext(root, "train", augment=False, tasks="seg,sal")
    assert ds.tasks == {"seg": 21, "sal": 1} and "human_parts" not in ds[0]
    part = PartialLabels(ds, {"sal": [IDS["train"][2]]})
    assert (part[0]["sal"] == 255).all() and (part[1]["sal"] == 255).all()
    assert torch.equal(part[2]["sal"], ds[2]["sal"]) and torch.equal(part[0]["seg"], ds[0]["seg"])


def test_tasks_for_reads_no_files():
    assert PASCALContext.tasks_for(root="/nowhere") == {"seg": 21, "human_parts": 7, "sal": 1, "normal": 3}
    assert PASCALContext.tasks_for(tasks=["normal", "seg"]) == {"seg": 21, "normal": 3}
    with pytest.raises(ArgumentError, match="edge"):
        PASCALContext.tasks_for(tasks="seg,edge")


def test_errors_name_the_file(root, tmp_path):
    with pytest.raises(MissingDataError, match="nowhere"):
        PASCALContext(tmp_path / "nowhere")
    with pytest.raises(MissingDataError, match="test.txt"):
        PASCALContext(root, "test")
    stem = IDS["val"][0]
    (root / "sal_distill" / f"{stem}.png").unlink()
    with pytest.raises(MissingDataError, match=f"sal_distill/{stem}.png"):
        PASCALContext(root, "val")
    assert len(PASCALContext(root, "val", tasks="seg,human_parts")) == 2  # sal not asked: not needed
    Image.fromarray(np.zeros((H + 1, W), np.uint8), mode="L").save(root / "sal_distill" / f"{stem}.png")
    with pytest.raises(DataError, match=f"sal_distill/{stem}.png.*shape"):
        PASCALContext(root, "val")[0]
    (root / "normals_distill" / f"{stem}.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(DataError, match=f"normals_distill/{stem}.png"):
        PASCALContext(root, "val", tasks="normal")[0]
    savemat(root / "human_parts" / f"{stem}.mat", {"objects": np.zeros(1)})
    with pytest.raises(DataError, match=f"human_parts/{stem}.mat.*'anno'"):
        PASCALContext(root, "val", tasks="human_parts")[0]
    write_part_mat(
        root / "human_parts" / f"{stem}.mat", stem, [_obj("person", 15, _box(0, 2, 0, 2), {"tail": _box(0, 1, 0, 1)})]
    )
    with pytest.raises(DataError, match="'tail'"):
        PASCALContext(root, "val", tasks="human_parts")[0]
    (root / "ImageSets/Context/val.txt").write_text(f"{stem}\n{stem} extra\n")
    with pytest.raises(DataError, match="val.txt' line 2"):
        PASCALContext(root, "val")
    with pytest.raises(ArgumentError, match="length"):
        PASCALContext(root, "train", length=0)


@pytest.mark.slow
def test_train_runs_on_the_fixture(root):
    args = ["train", "--data", f"pascal_context:{root}", "--tasks", "seg,human_parts", "--backbone", "test_resnet"]
    args += ["--size", "32", "--steps", "2", "--train-images", "2", "--val-images", "2", "--batch-size", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "human_parts" in result.output and "miou" in result.output
