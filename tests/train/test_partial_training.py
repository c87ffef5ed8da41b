"""Training on partial labels: the loss normalisation (``train.partial_loss``) and the per-task
batches of a single-task reference (``train.batches: per_task``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import tiny_recipe

from fusionsearch.experiment.experiment import Experiment
from fusionsearch.train.config import TrainConfig
from fusionsearch.train.loading import OneTaskAtATime, TaskBatches, train_loader
from fusionsearch.train.partial import labelled_indices, loss_scales
from fusionsearch.train.trainer import fit


def _exp(labelled: dict | None = None, length: int = 16) -> Experiment:
    r = tiny_recipe()
    data = {**r.data, "train_length": length}
    if labelled:
        data["labelled"] = labelled
    return Experiment(r.with_overrides(data=data))


def test_loss_scales_per_rule():
    masks = {"a": torch.tensor([True, False, False, False]), "b": torch.ones(4, dtype=torch.bool)}
    masks["c"] = torch.zeros(4, dtype=torch.bool)
    assert loss_scales(masks, "batch", 4) == {"a": 0.25, "b": 1.0}  # c: labelled nowhere, no loss at all
    assert loss_scales(masks, "labelled", 4) == {"a": 1.0, "b": 1.0}
    # per-task batches: the concatenated batch holds K x B images, each task's own B fully labelled
    assert loss_scales({"a": torch.tensor([True] * 4 + [False] * 4)}, "batch", 4) == {"a": 1.0}


def _build(exp: Experiment, plan: str) -> torch.nn.Module:
    exp.datasets(), exp.graph()  # made once, before the draws below
    torch.manual_seed(0)  # the columns are timm's, drawn from the global generator
    return exp.build(exp.baseline_plan(plan), init_seed=0)


def _trained(exp: Experiment, plan: str, **cfg_args) -> dict[str, torch.Tensor]:
    net = _build(exp, plan)
    cfg = TrainConfig(**{"steps": 2, "batch_size": 4, "progress": False, **cfg_args})
    fit(net, exp.tasks(), exp.datasets()[0], None, cfg, device="cpu")
    return net.state_dict()


def test_fully_labelled_data_trains_the_same_under_both_rules():
    exp = _exp()
    a = _trained(exp, "shared", optimizer="sgd", partial_loss="labelled")
    b = _trained(exp, "shared", optimizer="sgd", partial_loss="batch")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit: every factor is exactly 1


def test_batch_rule_scales_a_partly_labelled_tasks_gradient_by_its_share():
    """One plain SGD step (no momentum, no decay): the seg head moves by n/B of what the
    ``labelled`` rule moves it, n the batch's seg-labelled images; normals (all labelled) alike."""
    exp = _exp({"seg": 0.25})
    net0 = _build(exp, "single")
    start = {k: v.clone() for k, v in net0.state_dict().items()}
    cfg = dict(optimizer="sgd", momentum=0.0, weight_decay=0.0, base_lr=0.1, steps=1, batch_size=8, batches="mixed")
    first = next(iter(train_loader(exp.datasets()[0], TrainConfig(**cfg), torch.device("cpu"))))
    n = int(exp.tasks()["seg"].labelled(first["seg"]).sum())
    assert 0 < n < 8, "the fixture's first batch must be partly labelled for seg"
    moved = {}
    for rule in ("labelled", "batch"):
        net = _build(exp, "single")
        fit(
            net,
            exp.tasks(),
            exp.datasets()[0],
            None,
            TrainConfig(progress=False, partial_loss=rule, **cfg),
            device="cpu",
        )
        moved[rule] = {k: v - start[k] for k, v in net.state_dict().items() if v.is_floating_point()}
    head = [k for k in moved["batch"] if k.startswith("heads.seg") and "weight" in k and "running" not in k]
    for k in head:
        torch.testing.assert_close(moved["batch"][k], moved["labelled"][k] * n / 8, rtol=1e-4, atol=1e-7)
    other = [k for k in moved["batch"] if k.startswith("heads.normal") and "weight" in k]
    assert other and all(torch.equal(moved["batch"][k], moved["labelled"][k]) for k in other)


def test_task_batches_draw_each_task_from_its_labelled_items_and_resume():
    indices = [[1, 4, 7], list(range(10))]
    full = list(TaskBatches(indices, 4, seed=3, start=0, steps=6))
    assert len(full) == 6 and all(len(b) == 8 for b in full)
    for batch in full:
        assert [k for (k, _), _ in batch] == [0] * 4 + [1] * 4
        assert all(i in indices[0] for (k, i), _ in batch[:4])
    tail = list(TaskBatches(indices, 4, seed=3, start=4, steps=6))
    assert tail == full[4:]  # a resumed run continues the same stream
    # the scarce task's stream is passes over its labelled items: each comes once per pass
    assert sorted(i for (k, i), _ in full[0][:3]) == [1, 4, 7]


def test_one_task_at_a_time_keeps_only_its_tasks_label():
    exp = _exp()
    data = OneTaskAtATime(exp.datasets()[0], ["seg", "normal"])
    seg_only, normal_only = data[(0, 3)], data[(1, 3)]
    tasks = exp.tasks()
    assert tasks["seg"].labelled(seg_only["seg"][None]).all()
    assert not tasks["normal"].labelled(seg_only["normal"][None]).any()
    assert tasks["normal"].labelled(normal_only["normal"][None]).all()
    assert not tasks["seg"].labelled(normal_only["seg"][None]).any()
    assert torch.equal(seg_only["image"], normal_only["image"])


def test_per_task_batches_train_each_column_on_full_batches_of_its_labelled_images():
    exp = _exp({"seg": 0.25})
    train = exp.datasets()[0]
    seg_items = labelled_indices(train, "seg")
    assert len(seg_items) == 4 and labelled_indices(train, "normal") == list(range(16))
    cfg = TrainConfig(steps=3, batch_size=4, batches="per_task", progress=False)
    tasks = exp.tasks()
    for batch in train_loader(train, cfg, torch.device("cpu"), tasks=["seg", "normal"]):
        assert batch["image"].shape[0] == 8
        assert tasks["seg"].labelled(batch["seg"]).tolist() == [True] * 4 + [False] * 4
        assert tasks["normal"].labelled(batch["normal"]).tolist() == [False] * 4 + [True] * 4
    net = exp.build(exp.baseline_plan("single"), init_seed=0)
    history = fit(net, tasks, train, None, cfg, device="cpu")
    assert history["step"] == 3 and all(torch.isfinite(torch.tensor(history["losses"])))


@pytest.mark.parametrize("field, value", [("partial_loss", "mean"), ("batches", "per-task")])
def test_bad_values_are_named(field, value):
    with pytest.raises(Exception, match=f"train {field} must be one of"):
        TrainConfig(**{field: value})
    assert dataclasses.fields(TrainConfig)  # the config stays a plain dataclass


def test_a_task_without_any_labelled_item_has_no_part():
    batches = list(TaskBatches([[], [0, 1, 2]], 2, seed=0, start=0, steps=3))
    assert len(batches) == 3 and all([k for (k, _), _ in b] == [1, 1] for b in batches)


def test_a_folder_says_which_images_carry_each_label(tmp_path):
    from folder_fixture import write_folder

    from fusionsearch.data.folder import FolderData
    from fusionsearch.train.partial import batches_of

    root = write_folder(tmp_path)
    data = FolderData(root, split="train")
    counts = {t: len(labelled_indices(data, t)) for t in data.tasks}
    assert all(0 < n <= len(data) for n in counts.values())
    expected = "per_task" if any(n < len(data) for n in counts.values()) else "mixed"
    assert batches_of("auto", data) == expected
