"""Label kinds as objects (issue 31): each kind's "no label here", per-image mask, resize, flip and
collate; a new variable-length kind written here, outside the package, batches as a list; and
``attr``, multi-label attributes, against a reference average precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

import fusionsearch as fs
from fusionsearch.data import collate_for
from fusionsearch.data.batching import KindCollate
from fusionsearch.errors import PlanError
from fusionsearch.nets.heads import SimpleHead
from fusionsearch.tasks import LABEL_KINDS, LabelKind, get_label_kind, get_task, register_label_kind
from fusionsearch.tasks.labels import ClassLabel, IndexMap, MultiLabel, ScalarMap, VectorMap
from fusionsearch.train.trainer import _to


def test_the_kinds_are_registered_value_objects():
    assert {"index_map", "scalar_map", "vector_map", "class", "multi_label"} <= set(LABEL_KINDS)
    assert (
        get_label_kind("index_map") == IndexMap() and IndexMap(3) != IndexMap() and hash(IndexMap()) == hash(IndexMap())
    )
    assert str(MultiLabel()) == "multi_label" and get_task("attr").label == MultiLabel()
    assert get_task("seg", ignore_index=7).label == IndexMap(7)
    assert [get_task(t).head_kind for t in ("normal", "depth", "age", "gender", "attr")] == [
        "dense",
        "dense",
        "cls",
        "cls",
        "cls",
    ]
    with pytest.raises(PlanError, match="unknown label kind 'boxes_typo'"):
        get_label_kind("boxes_typo")


@pytest.mark.parametrize(
    ("kind", "label", "blank"),
    [
        (IndexMap(), torch.tensor([[1, 2], [0, 3]]), 255),
        (ScalarMap(), torch.rand(1, 2, 2) + 0.5, 0.0),
        (VectorMap(), torch.nn.functional.normalize(torch.randn(3, 2, 2), dim=0), 0.0),
        (ClassLabel(), torch.tensor(4), -1),
        (MultiLabel(), torch.tensor([1.0, 0.0, 1.0]), -1.0),
    ],
)
def test_each_kind_blanks_a_label_and_masks_it_per_image(kind, label, blank):
    none = kind.unlabelled_like(label)
    assert none.shape == label.shape and (none == blank).all()
    batch = torch.stack([label, none, label])
    assert kind.labelled(batch).tolist() == [True, False, True]  # (B,), also for (B, A) attributes


def test_a_multi_label_image_is_labelled_where_any_attribute_is():
    batch = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, -1.0], [0.0, 0.0, 1.0]])
    assert MultiLabel().labelled(batch).tolist() == [True, False, True]
    assert get_task("attr", out_channels=3).labelled(batch).shape == (3,)


def test_resize_and_flip_follow_the_kind():
    seg = torch.tensor([[1, 2], [0, 3]])
    assert torch.equal(IndexMap().resize(seg, (2, 2), (4, 4))[::2, ::2], seg)
    assert torch.equal(IndexMap().flip(seg, 2), seg.flip(-1))
    normal = torch.nn.functional.normalize(torch.randn(3, 2, 2), dim=0)
    flipped = VectorMap().flip(normal, 2)
    assert torch.equal(flipped[0], -normal[0].flip(-1)) and torch.equal(flipped[1:], normal[1:].flip(-1))
    assert torch.equal(ClassLabel().flip(torch.tensor(3), 2), torch.tensor(3))
    attrs = torch.tensor([1.0, 0.0])
    assert torch.equal(MultiLabel().resize(attrs, (2, 2), (8, 8)), attrs)


class Marks(LabelKind):
    """A variable number of x positions per image: what a new kind of variable length must do."""

    def unlabelled_like(self, label: Tensor) -> Tensor:
        return torch.full((1,), float("nan"))

    def labelled(self, batch: list[Tensor]) -> Tensor:
        return torch.tensor([not bool(x.isnan().any()) for x in batch])

    def resize(self, label: Tensor, src: tuple[int, int], dst: tuple[int, int]) -> Tensor:
        return label * dst[1] / src[1]

    def flip(self, label: Tensor, width: int) -> Tensor:
        return width - label

    def collate(self, labels):
        return list(labels)


class MarkData(Dataset):
    tasks = {"marks": 1}

    def __init__(self) -> None:
        self.label_kinds = {"marks": Marks()}

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": torch.zeros(3, 4, 4), "marks": torch.arange(i + 1, dtype=torch.float32)}


def test_a_new_variable_length_kind_is_one_class_and_batches_as_a_list():
    register_label_kind("marks_test")(Marks)
    try:
        assert LABEL_KINDS["marks_test"] is Marks and str(Marks()) == "marks_test"
        data = MarkData()
        collate = collate_for(data)
        assert isinstance(collate, KindCollate)
        batch = next(iter(DataLoader(data, batch_size=3, collate_fn=collate)))
        assert batch["image"].shape == (3, 3, 4, 4)
        assert [m.tolist() for m in batch["marks"]] == [[0.0], [0.0, 1.0], [0.0, 1.0, 2.0]]
        moved = _to(batch, torch.device("cpu"))
        assert isinstance(moved["marks"], list) and len(moved["marks"]) == 3
        hidden = [batch["marks"][0], Marks().unlabelled_like(batch["marks"][1]), batch["marks"][2]]
        assert Marks().labelled(hidden).tolist() == [True, False, True]
        item = data[1]
        small = fs.data.transforms.resize_dense(item, (2, 2), data.label_kinds)
        assert small["marks"].tolist() == [0.0, 0.5]
        assert fs.data.transforms.hflip_dense(item, data.label_kinds)["marks"].tolist() == [4.0, 3.0]
    finally:
        LABEL_KINDS.pop("marks_test")
    assert collate_for(fs.data.SyntheticScenes("val", 2, 16)) is torch.utils.data.default_collate  # unchanged


def test_an_unregistered_task_predicts_per_image_when_its_label_kind_says_so():
    net = fs.build("test_resnet", {"tags": 5, "mask": 2}, task_args={"tags": {"label": "multi_label"}})
    out = net(torch.randn(2, 3, 32, 32))
    assert isinstance(net.heads["tags"], SimpleHead) and out["tags"].shape == (2, 5)
    assert out["mask"].shape == (2, 2, 32, 32)  # no kind named: a map


def _reference_ap(scores: np.ndarray, target: np.ndarray) -> float:
    """Average precision of one attribute, written out: the precision at each positive's rank,
    averaged over the positives (no tied scores here), unlabelled entries dropped first."""
    keep = target >= 0
    s, t = scores[keep], target[keep]
    order = np.argsort(-s)
    hits = t[order] == 1
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def test_attr_map_and_accuracy_equal_a_reference_on_fixed_predictions():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(12, 4)).astype(np.float32)
    target = rng.integers(0, 2, size=(12, 4)).astype(np.float32)
    target[:, 3] = 0  # an attribute without positives: left out of the mean
    target[[0, 5, 7], 1] = -1  # unlabelled entries
    task = get_task("attr", out_channels=4)
    task.update(torch.from_numpy(logits[:7]), torch.from_numpy(target[:7]))  # two batches, pooled
    task.update(torch.from_numpy(logits[7:]), torch.from_numpy(target[7:]))
    scores = 1 / (1 + np.exp(-logits))
    aps = [_reference_ap(scores[:, a], target[:, a]) for a in range(3)]
    accs = [((scores[:, a] >= 0.5) == target[:, a])[target[:, a] >= 0].mean() for a in range(4)]
    out = task.compute()
    assert out["map"] == pytest.approx(100 * np.mean(aps), abs=1e-4)
    assert out["mean_acc"] == pytest.approx(100 * np.mean(accs), abs=1e-4)
    per = task.per_attribute()
    assert per["ap"][3].isnan() and per["positives"].tolist() == [int((target[:, a] == 1).sum()) for a in range(4)]


def test_attr_loss_counts_labelled_entries_only_and_takes_positive_weights():
    task = get_task("attr", out_channels=3)
    pred = torch.randn(4, 3, requires_grad=True)
    target = torch.tensor([[1.0, 0.0, -1.0], [-1.0, -1.0, -1.0], [0.0, 1.0, 1.0], [1.0, -1.0, 0.0]])
    keep = target >= 0
    expected = torch.nn.functional.binary_cross_entropy_with_logits(pred[keep], target[keep])
    loss = task.loss(pred, target)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert (pred.grad[~keep] == 0).all() and (pred.grad[keep] != 0).all()
    none = torch.full((2, 3), -1.0)
    zero = task.loss(torch.randn(2, 3, requires_grad=True), none)
    assert zero.item() == 0
    weighted = get_task("attr", out_channels=3, pos_weight=[1.0, 4.0, 1.0])
    assert weighted.loss(pred, target) > loss  # the second attribute's positive counts four times
    for bad in (0, [1.0, 2.0], float("inf"), [1.0, "x", 1.0]):
        with pytest.raises(PlanError, match="pos_weight"):
            get_task("attr", out_channels=3, pos_weight=bad)


def test_attr_works_on_token_backbones():
    net = fs.build("vit_tiny_patch16_224", {"attr": 6, "seg": 3}, fs.StitchPlan(at=["blocks.5"], unit="cross_stitch"),
                   input_size=(3, 32, 32), img_size=32)  # fmt: skip
    out = net(torch.randn(2, 3, 32, 32))
    assert out["attr"].shape == (2, 6) and out["seg"].shape == (2, 3, 32, 32)


def test_a_task_class_that_still_sets_kind_is_told_its_new_name():
    import pytest

    from fusionsearch.tasks.task import Task

    with pytest.raises(TypeError, match="Task.kind is now Task.head_kind"):

        class Old(Task):
            kind = "cls"
