"""``attr``: its mAP against a hand-written average precision, and unlabelled (-1) entries that
count in neither the loss nor the metrics."""

from __future__ import annotations

import math

import pytest
import torch

from fusionsearch.tasks.attributes import Attributes, attribute_ap


def reference_ap(scores: list[float], labels: list[int]) -> float:
    """Average precision without ties: the precision at the rank of each positive, averaged over
    the positives (entries labelled -1 left out first)."""
    kept = sorted(((s, y) for s, y in zip(scores, labels) if y >= 0), reverse=True)
    hits, total = 0, 0.0
    for rank, (_, y) in enumerate(kept, 1):
        if y == 1:
            hits += 1
            total += hits / rank
    return total / hits


def test_map_equals_reference_average_precision():
    logits = torch.tensor(
        [[2.0, -1.0, 0.3], [1.5, 0.2, -0.7], [-0.4, 1.1, 0.9], [0.8, -2.0, 1.7], [-1.3, 0.6, -0.2], [0.1, -0.5, 2.4]]
    )
    target = torch.tensor([[1, 0, -1], [0, 1, 0], [1, 1, 1], [0, 0, 1], [1, -1, 0], [0, 0, 1]])
    task = Attributes(out_channels=3)
    task.update(logits[:4], target[:4])  # two batches: the AP is over the whole set
    task.update(logits[4:], target[4:])
    probs = logits.sigmoid()
    ref = [reference_ap(probs[:, a].tolist(), target[:, a].tolist()) for a in range(3)]
    assert task.per_attribute()["ap"].tolist() == pytest.approx(ref)
    assert task.compute()["map"] == pytest.approx(100 * sum(ref) / 3)
    # the first attribute by hand: scores .88 (1) .82 (0) .69 (0) .52 (0) .40 (1) .21 (1)
    assert ref[0] == pytest.approx((1 / 1 + 2 / 5 + 3 / 6) / 3)


def test_unlabelled_attributes_count_nowhere():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    target = torch.randint(0, 2, (6, 4))
    target[:, 0] = torch.tensor([1, 0, 1, 0, 1, 0])
    target[1, 2] = target[4, 3] = target[0, 1] = -1
    unlabelled = target < 0
    task = Attributes(out_channels=4)

    def measure(pred: torch.Tensor) -> tuple[float, dict[str, float]]:
        task.reset()
        task.update(pred, target)
        return task.loss(pred, target).item(), task.compute()

    base = measure(logits)
    moved = logits.clone()
    moved[unlabelled] = torch.tensor([9.0, -9.0, 5.0])
    assert measure(moved) == base
    best = max((0, 2, 4), key=lambda i: logits[i, 0].item())  # the best-scored positive of attribute 0
    moved[best, 0] = -9.0  # now scored lowest: loss, mAP and accuracy all move
    loss, metrics = measure(moved)
    assert loss > base[0] and metrics["map"] < base[1]["map"] and metrics["mean_acc"] != base[1]["mean_acc"]


def test_an_attribute_without_a_labelled_entry_is_nan_and_left_out_of_map():
    # all -1 (none labelled) and all 0 (labelled, no positive): NaN where torchmetrics failed or warned
    scores = torch.tensor([[0.9, 0.2, 0.4], [0.3, 0.7, 0.1], [0.8, 0.6, 0.5], [0.1, 0.4, 0.9]])
    target = torch.tensor([[1, -1, 0], [0, -1, 0], [1, -1, 0], [0, -1, 0]])
    ap = attribute_ap(scores, target)
    assert ap[0].item() == pytest.approx(1.0) and ap[1:].isnan().all()
    task = Attributes(out_channels=3)
    task.update(scores.logit(), target)
    assert task.compute()["map"] == pytest.approx(100.0)
    assert task.per_category()["0"] == pytest.approx(100.0) and math.isnan(task.per_category()["1"])
    nothing = attribute_ap(scores, torch.full((4, 3), -1))  # no attribute labelled at all
    assert nothing.isnan().all() and nothing.dtype == torch.float64


def test_a_single_attribute_has_its_average_precision():
    scores, target = torch.tensor([[0.9], [0.2], [0.6], [0.4]]), torch.tensor([[1], [0], [-1], [1]])
    assert attribute_ap(scores, target).tolist() == pytest.approx([reference_ap([0.9, 0.2, 0.6, 0.4], [1, 0, -1, 1])])
