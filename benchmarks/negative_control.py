"""The negative control: how often the confirmation says "beats" when the true difference is zero.

    python benchmarks/negative_control.py                     # 100 replicates, 3 seeds each (about 15 min)
    python benchmarks/negative_control.py --replicates 200 --seeds 5
    python benchmarks/negative_control.py --replicates 4 --steps 4   # a smoke run

The comparison is built so that no plan can be better: the candidate is the single-task
networks themselves, trained again with another seed (another data order and another random
start, the same data, budget and code), and the reference is the single-task networks at the
confirmation's seed, exactly as a study's confirmation pairs every plan with ``single`` at the
same seed. Per seed, Delta-m of the candidate is measured against the reference; the verdict
over the replicate's seeds is ``confirm.paired_test``'s ``beats`` (the paired 95% interval lies
above zero), the very code that ends a study. Under a zero true difference it should come up in
about 2.5% of replicates (one side of a 95% interval) and at most 5%. Every replicate uses seeds
no other replicate uses, so the replicates are independent.

The networks are timm's ``test_resnet`` on the built-in scenes at 32 px, so that 100 x 3 x 2
trainings take minutes on two CPU cores; what is tested is the statistics, which do not depend
on the network's size. Printed: the false "beats" rate with its exact (Clopper-Pearson) 95%
binomial interval, the rate of intervals that exclude zero on either side (about 5% expected),
and the spread of the per-seed Delta-m.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table
from scipy import stats

from fusionsearch.experiment.experiment import Experiment
from fusionsearch.experiment.recipe import load_recipe
from fusionsearch.search.confirm import LEVEL, paired_test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3, help="confirmation seeds per replicate (the recipes' 3)")
    ap.add_argument("--backbone", default="test_resnet")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--train-images", type=int, default=64)
    ap.add_argument("--val-images", type=int, default=32)
    ap.add_argument("--labelled", type=float, default=None, help="share of training scenes with seg labels")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.replicates < 1 or args.seeds < 2:
        ap.error("--replicates must be >= 1 and --seeds >= 2 (a paired interval needs two seeds)")
    torch.set_num_threads(args.threads)
    console = Console()

    base = load_recipe("quick")
    data = {"name": "synthetic", "size": args.size, "train_length": args.train_images, "val_length": args.val_images}
    if args.labelled is not None:
        data["labelled"] = {"seg": args.labelled}
    train = {**base.train, "steps": args.steps, "eval_every": args.steps, "batch_size": 8}
    recipe = base.with_overrides(backbone=args.backbone, data=data, train=train)
    exp = Experiment(recipe, seed=0)  # one data set for every run: only the training seed differs
    single = exp.baseline_plan("single")

    def metrics(seed: int) -> dict[str, dict[str, float]]:
        cfg = recipe.train_config(seed=seed)
        cfg.eval_steps = []
        return exp.train(single, cfg=cfg, progress=False).metrics

    start = time.time()
    beats = below = 0
    deltas: list[float] = []
    for r in track(range(args.replicates), description="replicates", console=console):
        seeds = [10_000 + r * 100 + i for i in range(args.seeds)]
        plan: dict[int, float] = {}
        for s in seeds:
            reference = metrics(s)
            candidate = metrics(s + 50)  # the same procedure, another seed: true difference zero
            plan[s] = exp.delta_m(candidate, reference)
        deltas += plan.values()
        test = paired_test(plan, dict.fromkeys(seeds, 0.0))  # single's Delta-m is 0 at its own seed
        beats += test.beats
        below += test.diff.n >= 2 and test.diff.high < 0

    n = args.replicates
    ci = stats.binomtest(beats, n).proportion_ci(confidence_level=LEVEL, method="exact")
    ci2 = stats.binomtest(beats + below, n).proportion_ci(confidence_level=LEVEL, method="exact")
    table = Table(title=f"negative control: {args.backbone} at {args.size} px, {args.steps} steps, {args.seeds} seeds")
    for col in ("replicates", 'false "beats"', "rate [95% CI]", "either side", "rate [95% CI]", "Delta-m sd"):
        table.add_column(col)
    table.add_row(
        str(n),
        str(beats),
        f"{100 * beats / n:.1f}% [{100 * ci.low:.1f}, {100 * ci.high:.1f}]",
        str(beats + below),
        f"{100 * (beats + below) / n:.1f}% [{100 * ci2.low:.1f}, {100 * ci2.high:.1f}]",
        f"{statistics.stdev(deltas):.2f}",
    )
    console.print(table)
    verdict = "holds" if beats / n <= 0.05 else "FAILS"
    console.print(
        f'false "beats" rate {100 * beats / n:.1f}% (target <= 5%, expected about 2.5%): the guarantee {verdict};'
        f" {time.time() - start:.0f} s",
        highlight=False,
    )


if __name__ == "__main__":
    main()
