"""How fusion units start on warm-started columns: the learning-rate multiplier under the recipe's
optimiser and the BatchNorm start (paper or calibrated), over fine-tuning seeds.

    python benchmarks/fusion_start.py                      # the default study's protocol (recipe quick)
    python benchmarks/fusion_start.py --rows nddr:100:paper,nddr:1:calibrated --seeds 5
    python benchmarks/fusion_start.py --backbone test_resnet --size 32 --steps 8   # a smoke run

The protocol is the default study's (and its confirmation's): the single-task nets are trained
once with the study seed for ``train.steps`` (the warm start); then every row, and ``single``
beside it, starts from them and fine-tunes ``search.finetune_steps`` at ``base_lr x
search.finetune_lr_mult`` with each of ``--seeds`` fresh seeds (``confirm.confirm_seeds``: the data
order and the new modules' draws change, the warm start does not). Delta-m of each run is
against ``single`` at the same seed. A row is ``UNIT:LR_MULT:BN_INIT[:shortcut]`` with ``UNIT`` one
of the registered units (at every boundary, init (0.9, 0.1), as ``UNIT_default``), ``LR_MULT`` a
number or ``default`` (``conventions.fusion_lr_mult`` for the recipe's optimiser) and ``BN_INIT``
``paper`` or ``calibrated``; ``:shortcut`` adds the NDDR-Shortcut (the official Xavier
conv-BN-ReLU, at the same multiplier), ``:head=X`` sets the head input's multiplier (the shortcut,
or sluice's beta mix); ``shared`` is the one-trunk baseline.

Printed per row: Delta-m before fine-tuning (the start alone, seed 1), and after fine-tuning the
mean, seed standard deviation and Student t 95% interval over the seeds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from fusionsearch.experiment.experiment import Experiment, WarmStart
from fusionsearch.experiment.recipe import load_recipe
from fusionsearch.nets.plan import StitchPlan
from fusionsearch.search.confirm import confirm_seeds, t_interval
from fusionsearch.train.config import TrainConfig
from fusionsearch.train.trainer import calibrate, evaluate

DEFAULT_ROWS = (
    "shared",
    "nddr:100:paper",
    "nddr:100:calibrated",
    "nddr:10:calibrated",
    "nddr:1:paper",
    "nddr:1:calibrated",
    "nddr:0.1:calibrated",
    "cross_stitch:100:paper",
    "cross_stitch:10:paper",
    "cross_stitch:1:paper",
    "sluice:100:paper",
    "sluice:10:paper",
    "sluice:1:paper",
    "nddr:100:paper:shortcut",
    "nddr:1:calibrated:shortcut",
)


def row_plan(exp: Experiment, spec: str) -> tuple[StitchPlan, str]:
    """The plan and bn_init of one row spec."""
    if spec == "shared":
        return exp.baseline_plan("shared"), "paper"
    parts = spec.split(":")
    extra = parts[3:]
    if len(parts) < 3 or any(e != "shortcut" and not e.startswith("head=") for e in extra):
        raise SystemExit(f"row {spec!r}: use UNIT:LR_MULT:BN_INIT[:shortcut][:head=X], e.g. nddr:1:calibrated")
    unit, mult, bn = parts[:3]
    plan = copy.deepcopy(exp.baseline_plan(f"{unit}_default"))
    if mult != "default":
        plan.unit_args["lr_mult"] = float(mult)
    for e in extra:
        if e == "shortcut":
            plan.shortcut, plan.shortcut_init = True, "xavier"
        else:
            plan.head_input_lr_mult = float(e.removeprefix("head="))
    return plan, bn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="quick")
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="warm-start steps (default: the recipe's)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = load_recipe(args.recipe)
    if args.backbone:
        r.backbone = args.backbone
    if args.size:
        r.data = {**r.data, "size": args.size}
    if args.steps:
        r.train = {**r.train, "steps": args.steps}
    r.__post_init__()
    exp = Experiment(r)
    space = r.space
    base = r.train_config(progress=False)
    console = Console(emoji=False)
    console.print(
        f"{r.name}: {r.backbone} {r.data.get('size')} px, {base.optimizer}, warm start {base.steps} steps,"
        f" fine-tuning {space.finetune(base.steps)} steps at lr x{space.finetune_lr_mult:g}, seeds"
        f" {confirm_seeds(exp.seed, args.seeds)}",
        highlight=False,
    )
    t0 = time.perf_counter()
    warm_cfg = r.train_config(seed=exp.seed, progress=False, eval_steps=[])
    warm = WarmStart.of(exp.train(exp.baseline_plan("single"), cfg=warm_cfg, progress=False).net)
    console.print(f"warm start: {time.perf_counter() - t0:.0f} s", highlight=False)

    def finetune_cfg(seed: int, bn_init: str) -> TrainConfig:
        cfg = r.train_config(seed=seed, progress=False, eval_steps=[], bn_init=bn_init)
        cfg.steps = space.finetune(cfg.steps)
        cfg.base_lr *= space.finetune_lr_mult
        return cfg

    seeds = confirm_seeds(exp.seed, args.seeds)
    single_plan = exp.baseline_plan("single")
    single = {s: exp.train(single_plan, cfg=finetune_cfg(s, "paper"), start=warm).metrics for s in seeds}
    tasks = exp.tasks()
    _, val = exp.datasets()
    table = Table(title=f"fusion start on warm-started columns ({len(seeds)} seeds, Delta-m % vs single)")
    for col in ("row", "lr x", "before fine-tuning", "mean", "seed sd", "95% CI", "per seed", "s"):
        table.add_column(col)
    for spec in args.rows.split(","):
        t1 = time.perf_counter()
        plan, bn_init = row_plan(exp, spec)
        start_cfg = finetune_cfg(seeds[0], bn_init)
        net = exp.build(plan, start=warm, init_seed=start_cfg.seed)
        if bn_init == "calibrated":
            calibrate(net, exp.datasets()[0], start_cfg, torch.device("cpu"))
        before = exp.delta_m(evaluate(net, tasks, val, start_cfg.batch_size, "cpu"), single[seeds[0]])
        mults = sorted({g["lr_mult"] for g in net.param_groups(1.0, optimizer=base.optimizer) if "lr_mult" in g})
        dms = []
        for s in seeds:
            res = exp.train(plan, cfg=finetune_cfg(s, bn_init), start=warm)
            dms.append(exp.delta_m(res.metrics, single[s]))
        iv = t_interval(dms)
        sd = statistics.stdev(dms) if len(dms) > 1 else float("nan")
        table.add_row(
            spec,
            ",".join(f"{m:g}" for m in mults) or "-",
            f"{before:+.2f}",
            f"{iv.mean:+.2f}",
            f"{sd:.2f}",
            f"[{iv.low:+.2f}, {iv.high:+.2f}]",
            " ".join(f"{d:+.1f}" for d in dms),
            f"{time.perf_counter() - t1:.0f}",
        )
        console.print(f"{spec}: {iv} (sd {sd:.2f}) {[round(d, 2) for d in dms]}", highlight=False)
    Console(width=160, emoji=False).print(table)
    console.print(f"total {time.perf_counter() - t0:.0f} s", highlight=False)


if __name__ == "__main__":
    main()
