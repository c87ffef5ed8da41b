"""CelebA on a fixture written in the distributed format: torchvision's ``celeba/`` folder with
8 x 12 JPEGs and the three lists, space-padded as the real files are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fusionsearch.cli import app
from fusionsearch.data import DataError, MissingDataError, PartialLabels, collate_for
from fusionsearch.data.celeba import ATTRIBUTES, FLIP_PAIRS, CelebA
from fusionsearch.errors import ArgumentError
from fusionsearch.tasks.attributes import Attributes
from fusionsearch.tasks.points import Landmarks, Points

PARTS = [0, 0, 0, 0, 1, 1, 1, 2, 2]  # 4 train, 3 valid, 2 test
W, H = 8, 12
LANDMARK_HEADER = " ".join(f"{p}_{c}" for p in ("lefteye", "righteye", "nose", "leftmouth", "rightmouth") for c in "xy")


def write_celeba(root: Path, nested: bool = True) -> dict[str, np.ndarray]:
    """9 aligned faces with their lists; returns the values written (attributes in {-1, 1})."""
    base = root / "celeba" if nested else root
    (base / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"{i:06d}.jpg" for i in range(1, len(PARTS) + 1)]
    attrs = rng.choice([-1, 1], size=(len(names), 40))
    base_pts = np.array([[2, 4], [6, 4], [4, 6], [3, 9], [5, 9]])
    points = np.stack([base_pts + [i % 2, i % 3] for i in range(len(names))])  # inside the 8 x 12 image
    for name in names:
        pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(base / "img_align_celeba" / name, quality=95)
    lines = [f"{len(names)}", " ".join(ATTRIBUTES) + " "]  # the real header ends with a space
    lines += [name + "".join(f" {v:2d}" for v in row) for name, row in zip(names, attrs)]
    (base / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    lines = [f"{len(names)}", LANDMARK_HEADER]
    lines += [f"{name} " + " ".join(f"{v:4d}" for v in row.reshape(-1)) for name, row in zip(names, points)]
    (base / "list_landmarks_align_celeba.txt").write_text("\n".join(lines) + "\n")
    (base / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, PARTS)))
    return {"names": np.array(names), "attrs": attrs, "points": points.astype(np.float32)}


@pytest.fixture
def celeba(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    return tmp_path, write_celeba(tmp_path)


def test_values_read_back_with_minus_one_as_absent(celeba):
    root, written = celeba
    data = CelebA(root, split="train", augment=False)
    assert len(data) == 4 and data.item_ids() == list(written["names"][:4])
    assert data.tasks == {"attr": 40, "landmarks": 10} and data.attr_names == list(ATTRIBUTES)
    item = data[2]
    assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.float32
    assert item["attr"].dtype == torch.int64 and item["attr"].tolist() == (written["attrs"][2] == 1).tolist()
    assert item["landmarks"].dtype == torch.float32
    assert torch.equal(item["landmarks"], torch.from_numpy(written["points"][2]))
    assert data.label_kinds["landmarks"] == Points(flip_pairs=FLIP_PAIRS)
    assert torch.equal(CelebA(root / "celeba", split="train", augment=False)[2]["attr"], item["attr"])


def test_official_folders_are_read(tmp_path):
    written = write_celeba(tmp_path, nested=False)
    (tmp_path / "Anno").mkdir()
    (tmp_path / "Eval").mkdir()
    (tmp_path / "Img").mkdir()
    for name in ("list_attr_celeba.txt", "list_landmarks_align_celeba.txt"):
        (tmp_path / name).rename(tmp_path / "Anno" / name)
    (tmp_path / "list_eval_partition.txt").rename(tmp_path / "Eval" / "list_eval_partition.txt")
    (tmp_path / "img_align_celeba").rename(tmp_path / "Img" / "img_align_celeba")
    item = CelebA(tmp_path, split="test", augment=False)[1]
    assert torch.equal(item["landmarks"], torch.from_numpy(written["points"][8]))


def test_splits(celeba):
    root, written = celeba
    names = list(written["names"])
    assert CelebA(root, split="val").item_ids() == names[4:7]
    assert CelebA(root, split="val", eval_split="test").item_ids() == names[7:]
    assert CelebA(root, split="test").item_ids() == names[7:]
    assert CelebA(root, split="train", length=2).item_ids() == names[:2]
    with pytest.raises(ArgumentError, match="eval_split must be valid or test"):
        CelebA(root, split="val", eval_split="train")


def test_attribute_groups_are_tasks_of_type_attr(celeba):
    root, written = celeba
    groups = {"attr_hair": ["Black_Hair", "Blond_Hair", "Wavy_Hair"], "attr_face": ["Smiling"]}
    data = CelebA(root, split="train", attributes=groups, augment=False)
    assert data.tasks == {"attr_hair": 3, "attr_face": 1, "landmarks": 10}
    assert CelebA.tasks_for(attributes=groups) == data.tasks
    assert CelebA.tasks_for(attributes=groups, landmarks=False) == {"attr_hair": 3, "attr_face": 1}
    assert CelebA.task_types_for(attributes=groups) == {"attr_hair": "attr", "attr_face": "attr"}
    item = data[1]
    assert set(item) == {"image", "attr_hair", "attr_face", "landmarks"}
    cols = [ATTRIBUTES.index(n) for n in groups["attr_hair"]]
    assert torch.equal(item["attr_hair"], torch.from_numpy(written["attrs"][1, cols] == 1).long())
    assert item["attr_face"].tolist() == [int(written["attrs"][1, ATTRIBUTES.index("Smiling")] == 1)]
    with pytest.raises(ArgumentError, match=r"unknown CelebA attribute\(s\) Curly_Hair; valid: 5_o_Clock_Shadow"):
        CelebA.tasks_for(attributes={"attr_hair": ["Black_Hair", "Curly_Hair"]})


def test_landmarks_follow_resize_and_flip(celeba):
    root, written = celeba
    pts = torch.from_numpy(written["points"][0])  # [[2, 4], [6, 4], [4, 6], [3, 9], [5, 9]]
    item = CelebA(root, split="train", size=(6, 16), augment=False)[0]  # 12 x 8 -> 6 x 16
    assert item["image"].shape == (3, 6, 16)
    assert torch.equal(item["landmarks"], pts * torch.tensor([2.0, 0.5]))
    plain = CelebA(root, split="train", augment=False)[0]
    torch.manual_seed(0)  # first draw 0.496 < 0.5: flipped
    flipped = CelebA(root, split="train", augment=True)[0]
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    # x -> 8 - x, then the eyes and the mouth corners swap: the same five points for this symmetric face
    expected = torch.tensor([[2.0, 4.0], [6.0, 4.0], [4.0, 6.0], [3.0, 9.0], [5.0, 9.0]])
    assert torch.equal(flipped["landmarks"], expected) and torch.equal(flipped["attr"], plain["attr"])
    shifted = CelebA(root, split="train", augment=False)[1]["landmarks"]  # [[3, 5], [7, 5], [5, 7], [4, 10], [6, 10]]
    torch.manual_seed(0)
    mirrored = CelebA(root, split="train", augment=True)[1]["landmarks"]
    assert torch.equal(mirrored, torch.tensor([[1.0, 5.0], [5.0, 5.0], [3.0, 7.0], [2.0, 10.0], [4.0, 10.0]]))
    assert not torch.equal(mirrored, shifted)


def _rewrite(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("name", "line", "text", "message"),
    [
        ("list_attr_celeba.txt", 4, "000002.jpg  1 -1", "list_attr_celeba.txt' line 4: 3 fields"),
        ("list_attr_celeba.txt", 5, "000003.jpg" + " 1" * 39 + " 0", "list_attr_celeba.txt' line 5: attribute value 0"),
        ("list_attr_celeba.txt", 1, "nine", "list_attr_celeba.txt' line 1: expected the image count"),
        ("list_landmarks_align_celeba.txt", 3, "000001.jpg 1 2 3 4 5 6 7 8 9 x", "line 3: a value that is not"),
        ("list_eval_partition.txt", 2, "000002.jpg 5", "list_eval_partition.txt' line 2: expected 'FILE 0|1|2'"),
    ],
)
def test_malformed_lines_name_file_and_line(celeba, name, line, text, message):
    root, _ = celeba
    _rewrite(root / "celeba" / name, line, text)
    with pytest.raises(DataError, match=message):
        CelebA(root, split="train")


def test_missing_files_and_truncation_are_named(celeba):
    root, _ = celeba
    (root / "celeba" / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(MissingDataError, match=r"img_align_celeba/000002.jpg' does not exist"):
        CelebA(root, split="train")[1]
    lm = root / "celeba" / "list_landmarks_align_celeba.txt"
    lm.write_text("\n".join(lm.read_text().splitlines()[:-2]) + "\n")
    with pytest.raises(DataError, match="line 1 says 9 images, the file lists 7"):
        CelebA(root, split="train")
    lm.unlink()
    with pytest.raises(MissingDataError, match="no CelebA list_landmarks_align_celeba.txt .*landmarks: false"):
        CelebA(root, split="train")
    assert CelebA(root, split="train", landmarks=False).tasks == {"attr": 40}
    with pytest.raises(MissingDataError, match="CelebA root"):
        CelebA(root / "nowhere")


def test_unlabelled_attribute_and_landmarks_count_nowhere(celeba):
    """Partial labels blank a whole image: -1 for every attribute, NaN for every point; a batch
    that mixes it with labelled images gives the same losses and metrics whatever is predicted
    for it, and different ones when the labelled image's prediction moves."""
    root, written = celeba
    keep = {"attr": ["000002.jpg"], "landmarks": ["000001.jpg"]}
    data = PartialLabels(CelebA(root, split="train", augment=False), keep)
    batch = collate_for(data)([data[i] for i in range(2)])
    assert (batch["attr"][0] == -1).all() and torch.isnan(batch["landmarks"][1]).all()
    tasks = {"attr": Attributes(out_channels=40), "landmarks": Landmarks(out_channels=10)}
    torch.manual_seed(0)
    points = torch.cat([torch.rand(2, 10) * 8, torch.tensor([[8.0, 12.0]] * 2)], 1)  # the head's (W, H) last
    preds = {"attr": torch.randn(2, 40), "landmarks": points}

    def measure(p: dict[str, torch.Tensor]) -> list:
        out = []
        for name, task in tasks.items():
            task.reset()
            task.update(p[name], batch[name])
            out += [task.loss(p[name], batch[name]).item(), task.compute()]
        return out

    base = measure(preds)
    moved = {"attr": preds["attr"].clone(), "landmarks": preds["landmarks"].clone()}
    moved["attr"][0] += 5.0
    moved["landmarks"][1, :10] += 3.0
    assert measure(moved) == base
    moved["attr"][1] -= 5.0
    moved["landmarks"][0, :10] += 3.0
    after = measure(moved)
    assert after[0] != base[0] and after[2] != base[2] and after[3]["nme"] != base[3]["nme"]


def test_attr_loss_goes_down_on_the_fixture(celeba):
    root, _ = celeba
    data = CelebA(root, split="train", size=16, augment=False)
    batch = collate_for(data)([data[i] for i in range(len(data))])
    task = Attributes(out_channels=40)
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
    head = task.head(8)
    opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=0.05)
    losses = []
    for _ in range(8):
        loss = task.loss(head(body(batch["image"]), (16, 16)), batch["attr"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.slow
def test_train_cli_runs_on_the_fixture(celeba):
    root, _ = celeba
    args = ["train", "--data", f"celeba:{root}", "--tasks", "attr,landmarks", "--backbone", "test_resnet"]
    args += ["--size", "32", "--steps", "2", "--train-images", "2", "--val-images", "2", "--batch-size", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "nme" in result.output and "map" in result.output


def test_recipe_loads_without_the_data():
    from fusionsearch.experiment.experiment import Experiment
    from fusionsearch.experiment.recipe import load_recipe

    recipe = load_recipe("celeba_mgda")
    sizes = Experiment(recipe).task_sizes(read_data=False)
    assert sum(sizes[t] for t in recipe.tasks if t != "landmarks") == 40
    assert recipe.task_types() == {t: "attr" for t in recipe.tasks if t != "landmarks"}


@pytest.mark.slow
def test_recipe_groups_train_on_the_fixture(celeba, tmp_path):
    """The recipe's four attribute groups, each an attr task with its own head, train end to end."""
    import yaml

    root, _ = celeba
    recipe = yaml.safe_load((Path(__file__).parents[2] / "fusionsearch/recipes/celeba_mgda.yaml").read_text())
    recipe["data"]["root"] = str(root)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    args = ["train", "--recipe", str(tmp_path / "r.yaml"), "--backbone", "test_resnet", "--size", "32", "--steps", "2"]
    result = CliRunner().invoke(app, [*args, "--train-images", "2", "--val-images", "2", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert all(group in result.output for group in ("attr_hair", "attr_eyes_nose", "attr_mouth_beard", "attr_face"))
