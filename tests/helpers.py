"""Small builders shared by the tests (tiny recipes, trial bookkeeping, worker commands)."""

from __future__ import annotations

import glob
import shutil
import sys

import optuna
import torch
from optuna.trial import TrialState

from fusionsearch.experiment.recipe import Recipe, load_recipe


def tiny_recipe(steps: int = 4, **search) -> Recipe:
    """The quick recipe on test_resnet at 32 px; warm-started trials fine-tune steps // 4 steps."""
    quick = {k: v for k, v in load_recipe("quick").search.items() if not k.startswith("finetune")}
    return load_recipe("quick").with_overrides(
        backbone="test_resnet",
        data={"name": "synthetic", "size": 32, "train_length": 16, "val_length": 4},
        train={"steps": steps, "batch_size": 4, "base_lr": 0.002, "optimizer": "adamw", "eval_every": 2},
        search={**quick, **search},
    )


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def jobs(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """What each trial was queued for: a baseline name or a slot number (retries share it)."""
    return [t.user_attrs.get("baseline") or f"slot{t.user_attrs['slot']}" for t in trials]


def worker_cmd(study: str, url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fusionsearch.cli",
        "worker",
        "--study",
        study,
        "--storage",
        url,
        "--quiet",
        "--device",
        "cpu",
        "--threads",
        "1",
        *extra,
    ]


def _initdb() -> str | None:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return found


def grid_recipe(fused: list[str], **search) -> Recipe:
    """A grid over NDDR's init at the ``fused`` points of test_resnet; every other choice fixed."""
    points = ("act1", "layer1", "layer2", "layer3", "layer4")
    return tiny_recipe(
        units=["nddr"],
        init=[[1, 0], [0.9, 0.1]],
        lr_mult=[100.0, 100.0],
        fusion_weight_decay=[1e-4, 1e-4],
        base_lr=[0.002, 0.002],
        loss_weights={},
        fixed={
            **{f"unit@{p}": "nddr" if p in fused else "none" for p in points},
            "shared_prefix": "none",
            "shortcut": False,
        },
        **search,
    )


def _trained_single(exp):
    single = exp.build(exp.baseline_plan("single"))
    with torch.no_grad():
        for p in single.parameters():
            p.add_(0.1 * torch.randn_like(p))  # "trained": anything but the initial weights
    return single.eval()
