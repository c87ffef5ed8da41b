"""Partial labels: which loss normalisation lets sharing help, whichever task is scarce.

    python benchmarks/partial_loss.py              # both directions, 3 seeds (about 60 min on 2 cores)
    python benchmarks/partial_loss.py --scarce normal --out normal.json
    python benchmarks/partial_loss.py --steps 8 --seeds 1,2 --train-images 64   # a smoke run

The setting is the positive control (``recipes/positive_control.yaml``: resnet18 at 64 px on the
built-in scenes, one task labelled on 3% of the 1024 training scenes, the other on all) without
any loss weight set for the scarce task: every task weighs 1. For each direction (``--scarce``:
the task labelled on 3%) and each training seed (the confirmation's: 1, 2, 3 for study seed 0;
the labelled scenes are the study seed's, as in a study), it trains

- ``shared`` (one trunk, a head per task) and ``single`` (separate columns) on mixed batches (the
  training set as it comes) under each ``train.partial_loss`` rule: ``labelled`` (each task's mean
  over its labelled items at full strength) and ``batch`` (that mean x labelled items / batch size);
- ``shared`` on per-task batches (``train.batches: per_task``: each step a full batch of each task's
  labelled images) under each rule (``batch``: x the task's labelled share of the training set);
- ``single`` on per-task batches: each column on full batches of its own task's labelled images,
  what a user would train without a multi-task net (under AdamW the rule does not change it: a
  column sees only its own task's loss, and Adam's step does not depend on that loss's scale).

Printed per direction, batches and rule: the paired 95% interval over the seeds of Delta-m of
``shared`` against ``single`` on the same batches and against ``single`` on per-task batches
(``confirm.paired_test``, the code that ends a study). ``--out`` keeps every run's metrics in a
JSON file, read back on the next call: an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from fusionsearch.experiment.experiment import Experiment
from fusionsearch.experiment.recipe import Recipe, load_recipe
from fusionsearch.paths import write_atomic
from fusionsearch.search.confirm import paired_test

RULES = ("labelled", "batch")


def recipe_for(scarce: str, args: argparse.Namespace) -> Recipe:
    """The positive control with ``scarce`` labelled on ``--share`` of the scenes, every loss weight 1."""
    base = load_recipe("positive_control")
    data = {**base.data, "labelled": {scarce: args.share}}
    if args.train_images:
        data["train_length"] = args.train_images
    train = {**base.train, "steps": args.steps or base.train["steps"]}
    return base.with_overrides(data=data, task_args={}, train=train)


def runs(scarce: str, seed: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(key, baseline plan, train overrides) of every run of one direction and seed."""
    out = [
        (f"{scarce}/{seed}/single/per_task", "single", {"batches": "per_task", "partial_loss": "labelled"}),
        (f"{scarce}/{seed}/shared/per_task", "shared", {"batches": "per_task", "partial_loss": "labelled"}),
        (f"{scarce}/{seed}/shared/per_task_batch", "shared", {"batches": "per_task", "partial_loss": "batch"}),
    ]
    for rule in RULES:
        out += [
            (f"{scarce}/{seed}/single/{rule}", "single", {"batches": "mixed", "partial_loss": rule}),
            (f"{scarce}/{seed}/shared/{rule}", "shared", {"batches": "mixed", "partial_loss": rule}),
        ]
    return out


def train_all(args: argparse.Namespace, store: dict[str, Any], out: Path | None, console: Console) -> None:
    for scarce in args.scarce:
        recipe = recipe_for(scarce, args)
        exp = Experiment(recipe, seed=0)  # the study seed: which scenes keep the scarce label
        for seed in args.seeds:
            for key, plan, overrides in runs(scarce, seed):
                if key in store or (args.only and not any(key.endswith(o) for o in args.only)):
                    continue
                cfg = recipe.train_config(seed=seed, **overrides)
                cfg.eval_steps = []
                began = time.time()
                result = exp.train(exp.baseline_plan(plan), cfg=cfg, progress=False)
                store[key] = {"metrics": result.metrics, "seconds": time.time() - began}
                console.print(f"{key}: {time.time() - began:.0f} s", highlight=False)
                if out is not None:
                    write_atomic(out, lambda f: f.write(json.dumps(store, indent=1).encode()))


# (row, shared's run, the single run on the same batches)
ROWS = (
    ("mixed batches, labelled", "shared/labelled", "single/labelled"),
    ("mixed batches, batch", "shared/batch", "single/batch"),
    ("per-task batches, labelled", "shared/per_task", "single/per_task"),
    ("per-task batches, batch", "shared/per_task_batch", "single/per_task"),
)


def paired(store: dict[str, Any], exp: Experiment, scarce: str, seeds: list[int], plan: str, ref: str) -> str:
    """Delta-m of ``plan`` against ``ref`` per seed, as the paired interval a study's confirmation prints."""
    keys = [(f"{scarce}/{s}/{plan}", f"{scarce}/{s}/{ref}") for s in seeds]
    dm = {
        s: exp.delta_m(store[p]["metrics"], store[r]["metrics"])
        for s, (p, r) in zip(seeds, keys)
        if p in store and r in store
    }
    return str(paired_test(dm, {s: 0.0 for s in dm})) if dm else "-"


def report(args: argparse.Namespace, store: dict[str, Any], console: Console) -> None:
    for scarce in args.scarce:
        exp = Experiment(recipe_for(scarce, args), seed=0)
        table = Table(title=f"{scarce} labelled on {args.share:.0%} of the scenes: Delta-m (%) of shared")
        for col in ("batches, partial_loss", "vs single on the same batches", "vs single on the labelled subsets"):
            table.add_column(col)
        for row, plan, same in ROWS:
            cells = [paired(store, exp, scarce, args.seeds, plan, same)]
            cells.append(paired(store, exp, scarce, args.seeds, plan, "single/per_task"))
            table.add_row(row, *cells)
        table.add_row(
            "(single, mixed batches)", "", paired(store, exp, scarce, args.seeds, "single/labelled", "single/per_task")
        )
        console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scarce", default="seg,normal", help="the task(s) labelled on --share, one direction each")
    ap.add_argument("--share", type=float, default=0.03)
    ap.add_argument("--seeds", default="1,2,3", help="training seeds (the confirmation's for study seed 0)")
    ap.add_argument("--steps", type=int, default=None, help="default: the recipe's 240")
    ap.add_argument("--train-images", type=int, default=None, help="default: the recipe's 1024")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="train only the runs ending so, e.g. shared/per_task (comma-separated)")
    ap.add_argument("--out", type=Path, default=None, help="a JSON file of every run's metrics (resumed)")
    args = ap.parse_args()
    args.scarce = [s.strip() for s in args.scarce.split(",") if s.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.only = [o.strip() for o in args.only.split(",") if o.strip()]
    if len(args.seeds) < 2:
        ap.error("--seeds needs two or more seeds: an interval needs two")
    torch.set_num_threads(args.threads)
    console = Console()
    store: dict[str, Any] = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {}
    train_all(args, store, args.out, console)
    report(args, store, console)


if __name__ == "__main__":
    main()
