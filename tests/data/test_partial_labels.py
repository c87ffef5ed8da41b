"""Partial labels: an image without a task's label adds nothing to that task's loss, gradient or
metrics, on the built-in scenes and on the NYUv2 and IMDB-WIKI fixtures (real on-disk formats)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_recipe
from test_datasets import write_imdb, write_mtan
from typer.testing import CliRunner

from fusionsearch.cli import app
from fusionsearch.data import PartialLabels, SyntheticScenes
from fusionsearch.data.imdb_wiki import IMDBWiki
from fusionsearch.data.nyuv2 import NYUv2
from fusionsearch.data.partial import labelled_mask
from fusionsearch.errors import DataError
from fusionsearch.experiment.experiment import Experiment
from fusionsearch.experiment.recipe import RecipeError
from fusionsearch.tasks.task import get_task, unlabelled_like
from fusionsearch.tasks.weighting import WEIGHTINGS, make_weighting
from fusionsearch.train.config import TrainConfig
from fusionsearch.train.trainer import fit

runner = CliRunner()


def _batch(task: str, n: int = 3, hw: tuple[int, int] = (5, 6)) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Predictions and labels of ``n`` images for ``task``."""
    g = torch.Generator().manual_seed(0)
    t = get_task(task, **({"out_channels": 4} if task == "seg" else {}))
    if task == "seg":
        return torch.randn(n, 4, *hw, generator=g), torch.randint(0, 4, (n, *hw), generator=g), t
    if task == "normal":
        return torch.randn(n, 3, *hw, generator=g), torch.nn.functional.normalize(torch.randn(n, 3, *hw), dim=1), t
    if task == "depth":
        return torch.randn(n, 1, *hw, generator=g), torch.rand(n, 1, *hw, generator=g) + 0.5, t
    if task == "age":
        return torch.randn(n, 100, generator=g), torch.randint(0, 100, (n,), generator=g), t
    return torch.randn(n, 2, generator=g), torch.randint(0, 2, (n,), generator=g), t


TASKS = ["seg", "normal", "depth", "age", "gender"]


@pytest.mark.parametrize("task", TASKS)
def test_unlabelled_images_add_nothing_to_loss_or_metrics(task):
    pred, target, t = _batch(task)
    hidden = target.clone()
    hidden[1] = unlabelled_like(t.label, target[1])  # image 1 loses its label
    assert t.labelled(hidden).tolist() == [True, False, True]
    keep = [0, 2]
    # the loss is the labelled images' loss, whatever the unlabelled image predicts
    wild = pred.clone()
    wild[1] = 1e3
    assert torch.allclose(t.loss(wild, hidden), t.loss(pred[keep], target[keep]), atol=1e-6)
    # and so are the metrics
    t.reset()
    t.update(wild, hidden)
    partial = t.compute()
    t.reset()
    t.update(pred[keep], target[keep])
    assert partial == pytest.approx(t.compute())


@pytest.mark.parametrize("task", TASKS)
def test_a_batch_without_labels_gives_zero_loss_and_zero_gradient(task):
    pred, target, t = _batch(task)
    pred.requires_grad_(True)
    none = unlabelled_like(t.label, target)
    assert not t.labelled(none).any()
    loss = t.loss(pred, none)
    assert torch.isfinite(loss) and loss.item() == 0
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() == 0


def test_share_is_deterministic_per_seed_and_task():
    ids = [str(i) for i in range(200)]
    a = labelled_mask(ids, 0.1, "seg", seed=0)
    assert a.sum() == 20
    assert (a == labelled_mask(ids, 0.1, "seg", seed=0)).all()
    assert (a != labelled_mask(ids, 0.1, "seg", seed=1)).any()
    assert (a != labelled_mask(ids, 0.1, "normal", seed=0)).any()
    # a longer split keeps the shorter one's choice wherever the share picks the same ranks
    longer = labelled_mask([str(i) for i in range(400)], 0.05, "seg", seed=0)
    assert longer.sum() == 20
    assert labelled_mask(ids, 1.0, "seg").all()


def test_synthetic_scenes_lose_only_the_named_label():
    data = SyntheticScenes("train", length=20, size=16, seed=3)
    part = PartialLabels(data, {"seg": 0.25}, seed=3)
    assert part.counts() == {"seg": (5, 20)}
    kept = 0
    for i in range(20):
        item, full = part[i], data[i]
        assert torch.equal(item["normal"], full["normal"]) and torch.equal(item["image"], full["image"])
        if part.masks["seg"][i]:
            kept += 1
            assert torch.equal(item["seg"], full["seg"])
        else:
            assert (item["seg"] == 255).all()
    assert kept == 5


def test_recipe_labelled_thins_training_only():
    r = tiny_recipe()
    r = r.with_overrides(data={**r.data, "train_length": 16, "labelled": {"seg": 0.25}})
    train, val = Experiment(r).datasets()
    assert sum(bool((train[i]["seg"] != 255).any()) for i in range(len(train))) == 4
    assert all(bool((val[i]["seg"] != 255).all()) for i in range(len(val)))


@pytest.mark.parametrize(
    "labelled, message",
    [
        ({"depth": 0.1}, "not one of the tasks"),
        ({"seg": 0}, "in (0, 1]"),
        ({"seg": 1.5}, "in (0, 1]"),
        ({"seg": True}, "a share in (0, 1]"),
        ({"seg": []}, "a share in (0, 1]"),
        ("seg=0.1", "must be a mapping"),
    ],
)
def test_bad_labelled_specs_are_named(labelled, message):
    r = tiny_recipe()
    with pytest.raises(RecipeError, match="labelled") as e:
        r.with_overrides(data={**r.data, "labelled": labelled})
    assert message in str(e.value)


def test_nyuv2_fixture_by_id_list_and_file(tmp_path):
    root = write_mtan(tmp_path / "nyu", {"train": 4, "val": 2})
    data = NYUv2(root, "train", augment=False)
    assert data.item_ids() == ["0", "1", "2", "3"]
    part = PartialLabels(data, {"seg": ["1", "3"], "depth": 0.5}, seed=0)
    assert part.counts() == {"seg": (2, 4), "depth": (2, 4)}
    for i in range(4):
        item = part[i]
        assert bool((item["seg"] != 255).any()) == (i in (1, 3))
        assert bool((item["depth"] > 0).any()) == bool(part.masks["depth"][i])
        assert torch.equal(item["normal"], data[i]["normal"])
    ids = tmp_path / "seg_ids.txt"
    ids.write_text("# hand-labelled frames\n0\n\n2  # second\n")
    assert PartialLabels(data, {"seg": str(ids)}).masks["seg"].tolist() == [True, False, True, False]
    with pytest.raises(DataError, match="not in the training split.*'7'"):
        PartialLabels(data, {"seg": ["0", "7"]})
    with pytest.raises(DataError, match="the id file .*missing.txt.*: no such file"):
        PartialLabels(data, {"seg": str(tmp_path / "missing.txt")})


def test_imdb_wiki_fixture_gender_on_a_list(tmp_path):
    write_imdb(tmp_path)
    data = IMDBWiki(tmp_path, "train", fractions=(1.0, 0.0, 0.0), size=8, augment=False)
    wanted = data.item_ids()[:3]
    part = PartialLabels(data, {"gender": wanted, "age": 0.5})
    assert part.counts()["gender"] == (3, len(data)) and part.counts()["age"][0] == round(len(data) / 2)
    for i in range(len(data)):
        item = part[i]
        assert (int(item["gender"]) >= 0) == (i < 3)
        assert (int(item["age"]) >= 0) == bool(part.masks["age"][i])
    # the age metric counts the labelled images only
    age = get_task("age")
    batch = [part[i] for i in range(len(data))]
    target = torch.stack([b["age"] for b in batch])
    pred = torch.zeros(len(batch), 100)
    age.update(pred, target)
    n = int((target >= 0).sum())
    assert len(torch.cat(age.errors)) == n and n == part.counts()["age"][0]


class _Hide(torch.utils.data.Dataset):
    """``data`` with ``task`` unlabelled on every image."""

    def __init__(self, data, task):
        self.data, self.task, self.tasks = data, task, data.tasks

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        item = dict(self.data[i])
        item[self.task] = unlabelled_like(get_task(self.task).label, item[self.task])
        return item


def test_a_task_without_labels_leaves_its_head_untouched():
    r = tiny_recipe()
    exp = Experiment(r)
    net = exp.build(exp.baseline_plan("single"), init_seed=0)
    before = {k: v.clone() for k, v in net.heads["seg"].state_dict().items()}
    normal_before = {k: v.clone() for k, v in net.heads["normal"].state_dict().items()}
    train, _ = exp.datasets()
    cfg = TrainConfig(steps=3, batch_size=4, optimizer="sgd", base_lr=0.1, progress=False)
    history = fit(net, exp.tasks(), _Hide(train, "seg"), None, cfg, device="cpu")
    for k, v in net.heads["seg"].state_dict().items():
        assert torch.equal(v, before[k]), k  # no gradient, and SGD skips parameters without one
    assert any(not torch.equal(v, normal_before[k]) for k, v in net.heads["normal"].state_dict().items())
    assert all(torch.isfinite(torch.tensor(history["losses"])))


def test_a_batch_without_any_label_is_skipped():
    r = tiny_recipe()
    exp = Experiment(r)
    net = exp.build(exp.baseline_plan("shared"), init_seed=0)
    state = {k: v.clone() for k, v in net.state_dict().items() if v.is_floating_point()}
    train, _ = exp.datasets()
    cfg = TrainConfig(steps=2, batch_size=4, optimizer="adamw", progress=False)
    history = fit(net, exp.tasks(), _Hide(_Hide(train, "seg"), "normal"), None, cfg, device="cpu")
    assert history["step"] == 2 and all(v != v for v in history["losses"])  # NaN: nothing labelled
    for k, v in net.state_dict().items():
        if k in state and "running" not in k:
            assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_weightings_take_a_step_with_one_task_absent(name):
    """Every method, fed only the labelled task: no error, finite gradients, weight 0 for the
    absent task, and the present task's gradient unchanged in direction on the trunk."""
    if name in ("cagrad", "nash_mtl"):
        pytest.importorskip("cvxpy")
    trunk = torch.nn.Linear(4, 4)
    heads = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 1), "b": torch.nn.Linear(4, 1)})
    net = torch.nn.ModuleDict({"trunk": trunk, "heads": heads})
    w = make_weighting(name, ["a", "b"], seed=0)
    x = torch.randn(8, 4)
    for step in range(3):
        feats = trunk(x)
        present = (
            {"a": heads["a"](feats).pow(2).mean() + 1.0}
            if step != 1
            else {
                "a": heads["a"](feats).pow(2).mean() + 1.0,
                "b": heads["b"](feats).pow(2).mean() + 1.0,
            }
        )
        net.zero_grad(set_to_none=True)
        w.backward(present, torch.zeros(()), net, step, lambda t: t)
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
        if step != 1:
            assert heads["b"].weight.grad is None or heads["b"].weight.grad.abs().sum() == 0
            assert w.weights()["b"] == 0.0
            assert trunk.weight.grad is not None and trunk.weight.grad.abs().sum() > 0
        w.observe({t: float(v.detach()) for t, v in present.items()}, step)


def test_train_cli_labelled(tmp_path):
    out = tmp_path / "m.json"
    args = ["train", "--backbone", "test_resnet", "--size", "32", "--train-images", "8", "--val-images", "2",
            "--steps", "2", "--batch-size", "4", "--plan", "shared",
            "--labelled", "seg=0.25", "--save-metrics", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "seg on 2 of 8 training images (25%)" in result.output
    assert set(json.loads(out.read_text())) == {"seg", "normal"}
    bad = runner.invoke(app, [*args[:-4], "--labelled", "seg"])
    assert bad.exit_code == 2 and "TASK=SHARE" in bad.output
    typo = runner.invoke(app, [*args[:-4], "--labelled", "segg=0.1"])
    assert typo.exit_code == 2 and "'segg'" in typo.output and "Traceback" not in typo.output


@pytest.mark.slow
def test_run_and_compare_take_labelled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tiny_recipe(column_init="scratch").to_dict()
    d.update(name="tiny", study={"trials": 1, "pruner": "none"}, confirm={"top": 1, "seeds": 0})
    d["compare"] = {"search_trials": 0}
    d["train"]["steps"] = 2
    (tmp_path / "tiny.yaml").write_text(__import__("yaml").safe_dump(d))
    run = runner.invoke(app, ["run", "--recipe", "tiny.yaml", "--quiet", "--labelled", "seg=0.25"], terminal_width=250)
    assert run.exit_code == 0, run.output
    assert "partial labels: seg on 4 of 16 training images (25%)" in run.output
    assert "study tiny-test_resnet-seg-normal-labelled-seg0.25" in run.output
    cmp = runner.invoke(app, ["compare", "--recipe", "tiny.yaml", "--quiet", "--labelled", "seg=0.5", "--out", "o"])
    assert cmp.exit_code == 0, cmp.output
    assert "seg on 8 of 16" in cmp.output and (tmp_path / "o" / "tiny-compare.md").is_file()
