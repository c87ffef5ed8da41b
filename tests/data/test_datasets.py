"""NYUv2 (MTAN and NYUD layouts) and IMDB-WIKI loaders, on tiny fixtures written in the real on-disk formats."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from fusionsearch.data import DataError, MissingDataError, SyntheticScenes, get_dataset
from fusionsearch.data.imdb_wiki import IMDBWiki
from fusionsearch.data.nyuv2 import NYUv2
from fusionsearch.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fusionsearch.errors import FusionSearchError

H, W = 6, 8


def _unnormalize(image: torch.Tensor) -> torch.Tensor:
    return image * IMAGENET_STD + IMAGENET_MEAN


def _normals(rng: np.random.Generator) -> np.ndarray:
    n = rng.normal(size=(H, W, 3))
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[0, :2] = 0.0  # unlabelled pixels are zero vectors in both layouts
    return n.astype(np.float32)


def _depth(rng: np.random.Generator) -> np.ndarray:
    d = rng.uniform(0.5, 9.9, size=(H, W)).astype(np.float32)
    d[1, :3] = 0.0  # invalid
    return d


# ---------------------------------------------------------------- NYUv2, MTAN layout


def write_mtan(root: Path, counts: dict[str, int] | None = None) -> Path:
    """root/{split}/{image,label,depth,normal}/{i}.npy as MTAN's pre-processed NYUv2 stores them."""
    rng = np.random.default_rng(0)
    for split, n in (counts or {"train": 3, "val": 2}).items():
        for kind in ("image", "label", "depth", "normal"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = rng.integers(0, 13, size=(H, W)).astype(np.float64)
            label[0, 0] = -1.0  # MTAN's unlabelled
            np.save(root / split / "image" / f"{i}.npy", rng.uniform(0, 1, size=(H, W, 3)).astype(np.float32))
            np.save(root / split / "label" / f"{i}.npy", label)
            np.save(root / split / "depth" / f"{i}.npy", _depth(rng)[..., None])
            np.save(root / split / "normal" / f"{i}.npy", _normals(rng))
    return root


def test_mtan_layout_values(tmp_path):
    root = write_mtan(tmp_path)
    ds = NYUv2(root, "train")
    assert ds.layout == "mtan" and len(ds) == 3 and len(NYUv2(root, "val")) == 2
    assert ds.tasks == {"seg": 13, "normal": 3, "depth": 1} and not NYUv2(root, "val").augment
    item = NYUv2(root, "train", augment=False)[1]
    assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.float32
    assert item["seg"].shape == (H, W) and item["seg"].dtype == torch.int64
    assert item["normal"].shape == (3, H, W) and item["depth"].shape == (1, H, W)
    assert item["normal"].dtype == torch.float32 and item["depth"].dtype == torch.float32

    raw_image = torch.from_numpy(np.load(root / "train/image/1.npy")).permute(2, 0, 1)
    torch.testing.assert_close(_unnormalize(item["image"]), raw_image)
    raw_label = np.load(root / "train/label/1.npy")
    assert item["seg"][0, 0] == 255
    assert torch.equal(item["seg"][raw_label >= 0], torch.from_numpy(raw_label[raw_label >= 0]).long())
    norm = item["normal"].norm(dim=0)
    assert (norm[0, :2] == 0).all()
    torch.testing.assert_close(norm[1:], torch.ones(H - 1, W))
    torch.testing.assert_close(item["depth"][0], torch.from_numpy(np.load(root / "train/depth/1.npy")[..., 0]))
    assert (item["depth"][0, 1, :3] == 0).all()


def test_nyuv2_length_and_registry(tmp_path):
    root = write_mtan(tmp_path)
    ds = get_dataset("nyuv2", root=str(root), split="val", length=1)
    assert isinstance(ds, NYUv2) and len(ds) == 1
    with pytest.raises(IndexError):
        ds[1]


# ---------------------------------------------------------------- NYUv2, NYUD (survey) layout


def write_nyud(root: Path, splits: dict[str, list[str]] | None = None) -> Path:
    """images/*.jpg, segmentation/*.png (0 = void, k = class k - 1), normals/*.npy, depth/*.npy, gt_sets/*.txt."""
    rng = np.random.default_rng(1)
    splits = splits or {"train": ["0001", "0002", "0003"], "val": ["0004", "0005"]}
    for d in ("images", "segmentation", "normals", "depth", "gt_sets"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        (root / "gt_sets" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            Image.fromarray(rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg")
            seg = rng.integers(1, 41, size=(H, W), dtype=np.uint8)
            seg[0, 0], seg[0, 1], seg[0, 2] = 0, 1, 40
            Image.fromarray(seg).save(root / "segmentation" / f"{i}.png")
            np.save(root / "normals" / f"{i}.npy", _normals(rng))
            np.save(root / "depth" / f"{i}.npy", _depth(rng))
    return root


def test_nyud_layout_values(tmp_path):
    root = write_nyud(tmp_path)
    ds = get_dataset("nyuv2", root=root, split="train", augment=False)
    assert ds.layout == "nyud" and len(ds) == 3 and len(NYUv2(root, "val")) == 2
    assert ds.tasks == {"seg": 40, "normal": 3, "depth": 1} and len(ds.classes) == 40
    item = ds[0]
    raw = np.asarray(Image.open(root / "segmentation/0001.png")).astype(np.int64)
    assert item["seg"][0, 0] == 255 and item["seg"][0, 1] == 0 and item["seg"][0, 2] == 39
    assert torch.equal(item["seg"][raw > 0], torch.from_numpy(raw[raw > 0] - 1))
    assert int(item["seg"][raw > 0].max()) < 40
    raw_image = np.asarray(Image.open(root / "images/0001.jpg"), dtype=np.float32) / 255
    torch.testing.assert_close(_unnormalize(item["image"]), torch.from_numpy(raw_image).permute(2, 0, 1))
    torch.testing.assert_close(item["normal"], torch.from_numpy(np.load(root / "normals/0001.npy")).permute(2, 0, 1))
    torch.testing.assert_close(item["depth"], torch.from_numpy(np.load(root / "depth/0001.npy"))[None])


def test_nyud_reads_the_astmt_file_variants(tmp_path):
    """ASTMT's NYUD_MT: segmentation/*.mat, normals 8-bit images (2 v / 255 - 1), depth/*.mat."""
    root = write_nyud(tmp_path, {"val": ["a"]})
    seg = np.asarray(Image.open(root / "segmentation/a.png"))
    (root / "segmentation/a.png").unlink()
    scipy.io.savemat(root / "segmentation/a.mat", {"segmentation": seg})
    depth = np.load(root / "depth/a.npy")
    (root / "depth/a.npy").unlink()
    scipy.io.savemat(root / "depth/a.mat", {"depth": depth.astype(np.float64)})
    normal = np.load(root / "normals/a.npy")
    (root / "normals/a.npy").unlink()
    encoded = np.round((normal + 1) * 255 / 2).astype(np.uint8)
    Image.fromarray(encoded).save(root / "normals/a.png")

    item = NYUv2(root, "val")[0]
    assert item["seg"][0, 0] == 255 and torch.equal(item["seg"][seg > 0], torch.from_numpy(seg[seg > 0] - 1.0).long())
    torch.testing.assert_close(item["depth"][0], torch.from_numpy(depth))
    valid = np.linalg.norm(normal, axis=-1) > 0
    got = item["normal"].permute(1, 2, 0).numpy()
    assert np.abs(got[valid] - normal[valid]).max() < 0.02  # 8-bit quantisation
    torch.testing.assert_close(item["normal"].norm(dim=0)[torch.from_numpy(valid)], torch.ones(int(valid.sum())))


def test_resize_keeps_label_conventions(tmp_path):
    root = write_mtan(tmp_path)
    full = NYUv2(root, "train", augment=False)[0]
    small = NYUv2(root, "train", augment=False, size=(3, 4))[0]
    assert small["image"].shape == (3, 3, 4) and small["seg"].shape == (3, 4)
    assert small["normal"].shape == (3, 3, 4) and small["depth"].shape == (1, 3, 4)
    assert set(small["seg"].unique().tolist()) <= set(full["seg"].unique().tolist())
    norm = small["normal"].norm(dim=0)
    assert torch.all(((norm - 1).abs() < 1e-5) | (norm == 0))
    valid = full["depth"][full["depth"] > 0]
    d = small["depth"][small["depth"] > 0]
    assert d.numel() > 0 and d.min() >= valid.min() - 1e-5 and d.max() <= valid.max() + 1e-5  # no blending with holes
    big = NYUv2(root, "train", augment=False, size=12)[0]
    assert big["image"].shape == (3, 12, 12) and big["seg"].dtype == torch.int64


def test_flip_mirrors_and_negates_normal_x(tmp_path):
    root = write_mtan(tmp_path)
    plain = NYUv2(root, "train", augment=False)[2]
    aug = NYUv2(root, "train")  # train: augment defaults to on
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        flipped = bool(torch.rand(()) < 0.5)
        torch.manual_seed(seed)
        item = aug[2]
        seen.add(flipped)
        if not flipped:
            assert all(torch.equal(item[k], plain[k]) for k in plain)
            continue
        assert torch.equal(item["image"], plain["image"].flip(-1))
        assert torch.equal(item["seg"], plain["seg"].flip(-1))
        assert torch.equal(item["depth"], plain["depth"].flip(-1))
        assert torch.equal(item["normal"][0], -plain["normal"][0].flip(-1))
        assert torch.equal(item["normal"][1:], plain["normal"][1:].flip(-1))
    assert seen == {True, False}


def test_nyuv2_errors_name_the_file(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        NYUv2(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingDataError, match="gt_sets"):
        NYUv2(empty)

    nyud = write_nyud(tmp_path / "nyud")
    (nyud / "gt_sets/val.txt").unlink()
    with pytest.raises(MissingDataError, match=r"gt_sets/val\.txt"):
        NYUv2(nyud, "val")
    (nyud / "segmentation/0002.png").unlink()
    with pytest.raises(MissingDataError, match=r"images/0002\.jpg.*segmentation/0002\.png"):
        NYUv2(nyud, "train")

    mtan = write_mtan(tmp_path / "mtan")
    (mtan / "train/label/1.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"train/label/1\.npy"):
        NYUv2(mtan, "train")
    with pytest.raises(MissingDataError, match=r"test/image"):
        NYUv2(mtan, "test")
    np.save(mtan / "val/label/1.npy", np.zeros((H, W - 1)))
    ds = NYUv2(mtan, "val")
    ds[0]
    with pytest.raises(DataError, match=r"val/label/1\.npy.*shape \(6, 7\)") as err:
        ds[1]
    assert isinstance(err.value, FusionSearchError)
    with pytest.raises(ValueError, match="layout"):
        NYUv2(mtan, layout="cityscapes")


# ---------------------------------------------------------------- IMDB-WIKI


def _datenum(d: date) -> float:
    return float(d.toordinal() + 366)  # MATLAB serial date number


def _cells(values: list) -> np.ndarray:
    out = np.empty((1, len(values)), dtype=object)
    for i, v in enumerate(values):
        out[0, i] = v
    return out


FACE = (5, 4, 12, 13)  # x1 y1 x2 y2, MATLAB 1-based inclusive
FACE_COLOR = (200, 40, 60)


def _face_jpg(path: Path, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((20, 16, 3), dtype=np.uint8) + rng.integers(0, 60, dtype=np.uint8)
    x1, y1, x2, y2 = FACE
    img[y1 - 1 : y2, x1 - 1 : x2] = FACE_COLOR
    Image.fromarray(img).save(path, quality=95, subsampling=0)  # keep the face colour exact-ish


def write_imdb(root: Path, n_subjects: int = 40, source: str = "imdb") -> dict[str, list]:
    """root/<source>_crop/<source>.mat (a MATLAB struct as the real files are) plus one small jpg per row.

    Each subject has two good photos; the bad rows (two faces, unknown gender, age 120, no face,
    NaN dob) belong to subject 0. Returns the rows' expectations."""
    rng = np.random.default_rng(2)
    folder = root / f"{source}_crop"
    rows: dict[str, list] = {k: [] for k in ("dob", "taken", "path", "gender", "name", "id", "score", "second")}
    rows["good"] = []
    rows["age"] = []

    def add(subject, born, taken, gender=1.0, score=3.0, second=np.nan, good=True, age=None):
        k = len(rows["path"])
        born_text = f"{born.year}-{born.month}-{born.day}" if born is not None else "0-0-0"
        rel = f"{k % 100:02d}/nm{subject:07d}_rm{k}_{born_text}_{taken}.jpg"
        rows["dob"].append(_datenum(born) if born is not None else np.nan)
        rows["taken"].append(taken)
        rows["path"].append(rel)
        rows["gender"].append(gender)
        rows["name"].append(f"Person {subject}" if subject % 5 else np.array([]))  # some names unknown
        rows["id"].append(subject + 1)
        rows["score"].append(score)
        rows["second"].append(second)
        rows["good"].append(good)
        rows["age"].append(age)
        _face_jpg(folder / rel, rng)

    for s in range(n_subjects):
        add(s, date(1970 + s % 20, 3, 14), 2005, gender=float(s % 2), age=2005 - (1970 + s % 20))
        add(s, date(1970 + s % 20, 7, 2), 2005, gender=float(s % 2), age=2005 - (1970 + s % 20) - 1)
    add(0, date(1980, 1, 1), 2000, second=1.5, good=False)  # two faces
    add(0, date(1980, 1, 1), 2000, gender=np.nan, good=False)  # gender unknown
    add(0, date(1880, 1, 1), 2000, good=False)  # age 120
    add(0, date(1980, 1, 1), 2000, score=-np.inf, good=False)  # no face found
    add(0, None, 2000, good=False)  # no date of birth
    add(0, date(2000, 1, 1), 2000, good=True, age=0)  # age 0 is kept

    n = len(rows["path"])
    struct = {
        "dob": np.array([rows["dob"]]),
        "photo_taken": np.array([rows["taken"]], dtype=np.uint16),
        "full_path": _cells(rows["path"]),
        "gender": np.array([rows["gender"]]),
        "name": _cells(rows["name"]),
        "face_location": _cells([np.array([FACE], dtype=np.float64)] * n),
        "face_score": np.array([rows["score"]]),
        "second_face_score": np.array([rows["second"]]),
    }
    if source == "imdb":
        struct["celeb_names"] = _cells([f"Person {s}" for s in range(n_subjects)])
        struct["celeb_id"] = np.array([rows["id"]], dtype=np.uint16)
    scipy.io.savemat(folder / f"{source}.mat", {source: struct})
    return rows


def test_imdb_wiki_filtering_and_ages(tmp_path):
    rows = write_imdb(tmp_path)
    ds = IMDBWiki(tmp_path, "train", fractions=(1.0, 0.0, 0.0), size=8)
    assert ds.source == "imdb" and ds.tasks == {"age": 100, "gender": 2}
    good = [p for p, g in zip(rows["path"], rows["good"]) if g]
    assert sorted(ds.paths) == sorted(good)  # two faces, NaN gender, age 120, -inf score, NaN dob dropped
    expected_age = {p: a for p, a, g in zip(rows["path"], rows["age"], rows["good"]) if g}
    assert {p: int(a) for p, a in zip(ds.paths, ds.ages)} == expected_age  # birthday after 1 July: one less
    assert len(IMDBWiki(tmp_path, "val", fractions=(1.0, 0.0, 0.0))) == 0


def test_imdb_wiki_subject_disjoint_deterministic_split(tmp_path):
    write_imdb(tmp_path)
    parts = {s: IMDBWiki(tmp_path, s) for s in ("train", "val", "test")}
    subjects = {s: set(d.subjects) for s, d in parts.items()}
    assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"])
    assert not subjects["val"] & subjects["test"]
    assert sum(len(d) for d in parts.values()) == len(IMDBWiki(tmp_path, "train", fractions=(1, 0, 0)))
    assert len(parts["train"]) > len(parts["val"]) and len(parts["train"]) > len(parts["test"])
    again = IMDBWiki(tmp_path, "val")
    assert list(again.paths) == list(parts["val"].paths)
    other = IMDBWiki(tmp_path, "val", seed=1)
    assert set(other.subjects) != subjects["val"]


def test_imdb_wiki_items_crop_and_flip(tmp_path):
    write_imdb(tmp_path)
    ds = get_dataset("imdb_wiki", root=tmp_path, split="train", size=(10, 12), augment=False, margin=0.0)
    assert isinstance(ds, IMDBWiki) and ds.crop_face
    item = ds[0]
    assert item["image"].shape == (3, 10, 12) and item["image"].dtype == torch.float32
    assert item["age"].dtype == torch.int64 and item["age"].shape == () and 0 <= int(item["age"]) <= 99
    assert item["gender"].dtype == torch.int64 and int(item["gender"]) in (0, 1)
    face = _unnormalize(item["image"]).mean((1, 2)) * 255
    torch.testing.assert_close(face, torch.tensor(FACE_COLOR, dtype=torch.float32), atol=12, rtol=0)
    whole = IMDBWiki(tmp_path, "train", size=None, augment=False, crop_face=False)[0]
    assert whole["image"].shape == (3, 20, 16)
    cropped = IMDBWiki(tmp_path, "train", size=None, augment=False)[0]
    assert cropped["image"].shape == (3, 17, 14)  # 8 x 10 face + 40 % each side, clipped at the top: x 1..15, y 0..17

    aug = IMDBWiki(tmp_path, "train", size=(10, 12), margin=0.0, crop_face=False)
    plain = IMDBWiki(tmp_path, "train", size=(10, 12), augment=False, crop_face=False)[0]
    for seed in range(6):
        torch.manual_seed(seed)
        flipped = bool(torch.rand(()) < 0.5)
        torch.manual_seed(seed)
        image = aug[0]["image"]
        assert torch.equal(image, plain["image"].flip(-1) if flipped else plain["image"])


def test_wiki_source_uses_names_as_subjects(tmp_path):
    write_imdb(tmp_path, n_subjects=10, source="wiki")
    ds = IMDBWiki(tmp_path, "train", fractions=(1, 0, 0))
    assert ds.source == "wiki" and len(ds) == 21
    assert {s.split(":")[0] for s in ds.subjects} == {"name", "file"}  # empty name: the file's id prefix
    assert IMDBWiki(tmp_path / "wiki_crop", "train", fractions=(1, 0, 0)).mat_path == ds.mat_path


def test_imdb_wiki_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        IMDBWiki(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError, match=r"imdb\.mat"):
        IMDBWiki(tmp_path / "empty")

    bad = tmp_path / "bad"
    bad.mkdir()
    scipy.io.savemat(bad / "imdb.mat", {"wiki": {"dob": np.zeros((1, 2))}})
    with pytest.raises(DataError, match=r"bad/imdb\.mat.*no struct 'imdb'"):
        IMDBWiki(bad)
    scipy.io.savemat(bad / "imdb.mat", {"imdb": {"dob": np.zeros((1, 2))}})
    with pytest.raises(DataError, match=r"imdb\.mat.*full_path"):
        IMDBWiki(bad)

    rows = write_imdb(tmp_path / "ok", n_subjects=4)
    ds = IMDBWiki(tmp_path / "ok", "train", fractions=(1, 0, 0))
    (tmp_path / "ok" / "imdb_crop" / ds.paths[1]).unlink()
    ds[0]
    with pytest.raises(FileNotFoundError, match=str(ds.paths[1]).replace(".", r"\.")):
        ds[1]
    assert len(rows["path"]) == 14
    with pytest.raises(ValueError, match="fractions"):
        IMDBWiki(tmp_path / "ok", fractions=(0.5, 0.5, 0.5))


def test_every_dataset_declares_its_tasks():
    assert SyntheticScenes.tasks == {"seg": SyntheticScenes.num_classes, "normal": 3, "depth": 1}
    assert NYUv2.tasks["seg"] == 13 and IMDBWiki.tasks == {"age": 100, "gender": 2}
