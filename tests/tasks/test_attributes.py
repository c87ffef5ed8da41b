"""``attr``: its mAP against a hand-written average precision, and unlabelled (-1) entries that
count in neither the loss nor the metrics."""

from __future__ import annotations

import pytest
import torch

from fusionsearch.tasks.attributes import Attributes


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
