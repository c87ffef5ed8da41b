"""A new fusion unit, a new task with a new dense label and a new data set, each written here
against the declared contracts with no edit to the package: the unit is searched and reported,
the task's label is resized and flipped by its kind."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from optuna.trial import TrialState
from torch import Tensor, nn

import fusionsearch as fs
from fusionsearch.data import DATASETS, MultiTaskDataset, SyntheticScenes, register_dataset
from fusionsearch.data.transforms import hflip_dense, resize_dense
from fusionsearch.experiment.recipe import Recipe
from fusionsearch.nets.fusion import FUSION_UNITS, FusionUnit, register_fusion
from fusionsearch.report.html import write_report
from fusionsearch.search import StudySettings, prepare_study, run_worker
from fusionsearch.tasks.task import SCALAR_MAP, TASKS, Task, register_task


class MeanMix(FusionUnit):
    """Each task keeps (1 - w) of its feature and takes w of the tasks' mean (one learned w per task)."""

    identity_init = (1.0, 0.0)

    def __init__(self, channels, layout="NCHW", *, nonnegative=False, init=(0.9, 0.1), lr_mult=None, weight_decay=None):
        super().__init__(
            channels, layout, nonnegative=nonnegative, init=init, lr_mult=lr_mult, weight_decay=weight_decay
        )
        if len(set(self.channels)) != 1:
            raise fs.PlanError("mean_mix needs equal channels")
        self.w = nn.Parameter(torch.full((self.num_tasks,), 1.0 - float(self.init[0])))

    def fuse(self, feats: list[Tensor]) -> tuple[list[Tensor], Tensor | None]:
        mean = torch.stack(feats).mean(0)
        return [(1 - self.w[i]) * f + self.w[i] * mean for i, f in enumerate(feats)], None

    def mixing_weights(self) -> Tensor:
        k = self.num_tasks
        w = self.w.detach()
        return torch.eye(k) * (1 - w)[:, None] + w[:, None] / k

    def channel_weights(self, i: int) -> tuple[list[float], list[float]]:
        m = self.mixing_weights()
        return [m[i, i].item()] * self.channels[0], [m[i, j].item() for j in range(self.num_tasks) if j != i]


class EdgeHead(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, 1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.conv(x), size=size, mode="bilinear", align_corners=False)


class Edges(Task):
    """Depth edges: |grad depth| per pixel, a scalar map (0 = unlabelled); L1, mean absolute error."""

    label = SCALAR_MAP
    metrics = {"mae": False}
    primary = "mae"

    def head(self, in_channels: int) -> nn.Module:
        return EdgeHead(in_channels)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        valid = target > 0
        return (pred - target).abs()[valid].mean() if valid.any() else pred.sum() * 0

    def reset(self) -> None:
        self.err, self.n = 0.0, 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        valid = target > 0
        self.err += (pred - target).abs()[valid].sum().item()
        self.n += int(valid.sum())

    def compute(self) -> dict[str, float]:
        return {"mae": self.err / max(self.n, 1)}


class EdgeScenes(MultiTaskDataset):
    """The synthetic scenes' segmentation, plus edges from their depth."""

    tasks = {"seg": SyntheticScenes.tasks["seg"], "edges": 1}
    default_lengths = {"train": 16, "val": 4}
    takes_seed = True
    deterministic = True

    def __init__(self, split="train", length=None, size=None, seed=0):
        self.scenes = SyntheticScenes(split, length or self.default_lengths[split], size or 32, seed)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = self.scenes[i]
        d = item["depth"]
        gx = F.pad((d[..., 1:] - d[..., :-1]).abs(), (0, 1))
        return {"image": item["image"], "seg": item["seg"], "edges": gx + (d > 0) * 1e-3}


@pytest.fixture
def extensions():
    """Registered for one test only: the package's registries are left as they were."""
    register_fusion("mean_mix")(MeanMix)
    register_task("edges")(Edges)
    register_dataset("edge_scenes")(EdgeScenes)
    yield
    for registry, name in ((FUSION_UNITS, "mean_mix"), (TASKS, "edges"), (DATASETS, "edge_scenes")):
        registry.pop(name)


def test_the_new_label_is_resized_and_flipped_by_its_kind(extensions):
    item = EdgeScenes(length=1, size=32)[0]
    small = resize_dense(item, (16, 16))
    assert small["edges"].shape == (1, 16, 16) and small["seg"].shape == (16, 16)
    assert (small["edges"] >= 0).all() and small["seg"].dtype == torch.int64
    flipped = hflip_dense(item)
    assert torch.equal(flipped["edges"], item["edges"].flip(-1))  # a scalar map just moves


def test_the_new_unit_reproduces_the_backbone_at_identity(extensions):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet").eval()
    plan = fs.StitchPlan(at=["layer1", "layer2"], unit="mean_mix", unit_args={"init": MeanMix.identity_init})
    net = fs.build(model, {"seg": 3, "edges": 1}, plan, input_size=(3, 32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.forward_features(x)
        assert all(torch.equal(f, ref) for f in net.forward_features(x))


def test_the_new_unit_task_and_data_set_are_searched_and_reported(extensions, tmp_path):
    recipe = Recipe(
        name="toy",
        backbone="test_resnet",
        tasks=["seg", "edges"],
        data={"name": "edge_scenes", "size": 32},
        train={"steps": 4, "batch_size": 4, "base_lr": 0.002, "optimizer": "adamw", "eval_every": 2},
        search={"units": ["mean_mix"], "shared_prefix": False, "shortcut": [False], "column_init": "scratch"},
        confirm={"seeds": 0},
    )
    url = f"sqlite:///{tmp_path}/toy.db"
    study = prepare_study(recipe, StudySettings(study="toy", storage=url, trials=2, pruner="none", confirm_seeds=0))
    run_worker("toy", url, device="cpu")
    sampled = [t for t in study.get_trials() if "slot" in t.user_attrs]
    assert [t.state for t in sampled] == [TrialState.COMPLETE] * 2, [t.user_attrs.get("fail_reason") for t in sampled]
    assert all(t.user_attrs["plan"]["unit"] == "mean_mix" and t.user_attrs["plan"]["at"] for t in sampled)
    assert set(sampled[0].user_attrs["metrics"]) == {"seg", "edges"}
    html = write_report(study, tmp_path / "toy.html", url).read_text()
    assert "mean_mix" in html  # the learned weights of the new unit are drawn
