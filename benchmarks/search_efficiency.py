"""Does the search pay? TPE + Hyperband against random search without pruning, over several seeds,
on the built-in synthetic data with a fixed budget of trials.

    python benchmarks/search_efficiency.py                          # quick recipe, 3 seeds, 10 trials
    python benchmarks/search_efficiency.py --backbone test_resnet --trials 12 --seeds 0,1,2,3,4

For each seed and method a fresh study runs the baselines and then ``--trials`` sampled plans
(one worker, in this process). Printed per run:
  - trials to beat: the number of sampled trials until one beats the papers' default plan (NDDR at
    every boundary, (0.9, 0.1), lr x100) in Delta-m; "-" if none did;
  - best Delta-m of the sampled trials;
  - steps trained / steps of all trials run in full (what pruning saved).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from optuna.trial import TrialState

from fusionsearch.recipe import load_recipe
from fusionsearch.search import StudySettings, prepare_study, run_worker

METHODS = {"tpe+hyperband": ("tpe", "hyperband"), "random": ("random", "none")}


def one_run(recipe, method: str, seed: int, trials: int, folder: Path) -> dict:
    sampler, pruner = METHODS[method]
    url = f"sqlite:///{folder}/{method}-{seed}.db"
    settings = StudySettings(study="bench", storage=url, trials=trials, sampler=sampler, pruner=pruner, seed=seed)
    study = prepare_study(recipe, settings)
    t0 = time.perf_counter()
    run_worker("bench", url, device="cpu")
    wall = time.perf_counter() - t0
    all_trials = study.get_trials()
    default = next(t for t in all_trials if t.user_attrs.get("baseline") == "nddr_default").values[0]
    searched = [t for t in all_trials if t.user_attrs.get("baseline") is None]
    to_beat = next(
        (i + 1 for i, t in enumerate(searched) if t.state == TrialState.COMPLETE and t.values[0] > default), None
    )
    steps_full = recipe.train_config().steps
    used = sum(t.user_attrs.get("step", 0) for t in searched)
    done = [t.values[0] for t in searched if t.state == TrialState.COMPLETE]
    return {
        "default": default,
        "to_beat": to_beat,
        "best": max(done) if done else float("nan"),
        "compute": used / (steps_full * max(1, len(searched))),
        "pruned": sum(t.state == TrialState.PRUNED for t in searched),
        "wall": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="quick")
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe)
    data = dict(recipe.data)
    if args.size:
        data["size"] = args.size
    recipe = recipe.with_overrides(backbone=args.backbone, data=data)
    if args.steps:
        recipe.train = {**recipe.train, "steps": args.steps}
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{recipe.backbone}, {recipe.image_size} px, {recipe.train_config().steps} steps, {args.trials} trials")
    print(
        f"{'method':15s} {'seed':>4s} {'default dm':>10s} {'to beat':>7s} {'best dm':>8s} {'compute':>7s} "
        f"{'pruned':>6s} {'wall s':>7s}"
    )
    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory() as d:
        for seed in seeds:
            for method in METHODS:
                r = one_run(recipe, method, seed, args.trials, Path(d))
                results[method].append(r)
                print(
                    f"{method:15s} {seed:4d} {r['default']:+10.2f} {r['to_beat'] or '-':>7} {r['best']:+8.2f} "
                    f"{r['compute']:7.0%} {r['pruned']:6d} {r['wall']:7.0f}"
                )
    print("summary (median over seeds):")
    for method, rs in results.items():
        beat = [r["to_beat"] for r in rs if r["to_beat"]]
        print(
            f"  {method:15s} beat the default in {len(beat)}/{len(rs)} runs"
            f" (median {statistics.median(beat) if beat else '-'} trials),"
            f" best dm {statistics.median(r['best'] for r in rs):+.2f},"
            f" compute {statistics.median(r['compute'] for r in rs):.0%} of unpruned"
        )


if __name__ == "__main__":
    main()
