"""Does the search pay? The recipe's sampler and pruner against random search without pruning,
over several study seeds, judged on *confirmed* Delta-m (the winner retrained over fresh seeds),
not on the luckiest single run.

    python benchmarks/search_efficiency.py                          # quick recipe, 3 seeds, 10 trials
    python benchmarks/search_efficiency.py --backbone test_resnet --size 32 --trials 12 --seeds 0,1,2,3,4

For each study seed and method a fresh study runs the warm start and baselines, ``--trials``
sampled plans (one worker, in this process), then confirms its top plan and the baselines over
``--confirm`` fresh seeds. Printed per run:
  - trials to beat: sampled trials until one beats the papers' default plan (NDDR at every
    boundary, (0.9, 0.1), lr x100) in the search's own Delta-m; "-" if none did;
  - search best: the best sampled trial's Delta-m (one run);
  - confirmed: that plan's mean Delta-m over the confirmation seeds, and whether it beats the best
    baseline (paired 95% interval above 0);
  - steps trained / steps of all trials run in full (what pruning saved).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from optuna.trial import TrialState

from fusionsearch.experiment.recipe import load_recipe
from fusionsearch.search import StudySettings, prepare_confirmation, prepare_study, run_worker
from fusionsearch.search.confirm import summarize
from fusionsearch.search.study import trial_steps


def methods(recipe) -> dict[str, tuple[str, str]]:
    own = (recipe.study.get("sampler", "tpe"), recipe.study.get("pruner", "hyperband"))
    return {f"{own[0]}+{own[1]}": own, "random": ("random", "none")}


def one_run(recipe, method: tuple[str, str], seed: int, trials: int, confirm: int, folder: Path) -> dict:
    sampler, pruner = method
    url = f"sqlite:///{folder}/{sampler}-{pruner}-{seed}.db"
    settings = StudySettings(
        study="bench",
        storage=url,
        trials=trials,
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        confirm_top=1,
        confirm_seeds=confirm,
    )
    study = prepare_study(recipe, settings)
    t0 = time.perf_counter()
    run_worker("bench", url, device="cpu")
    prepare_confirmation(study, settings)
    run_worker("bench", url, device="cpu")
    wall = time.perf_counter() - t0
    all_trials = study.get_trials()
    default = next(t for t in all_trials if t.user_attrs.get("baseline") == "nddr_default").values[0]
    searched = [t for t in all_trials if "slot" in t.user_attrs]
    conf = summarize(study)
    top = next((p for p in conf.plans if not p.baseline and p.interval is not None), None)
    to_beat = next(
        (i + 1 for i, t in enumerate(searched) if t.state == TrialState.COMPLETE and t.values[0] > default), None
    )
    steps_full = trial_steps(recipe)
    used = sum(t.user_attrs.get("step", 0) for t in searched)
    done = [t.values[0] for t in searched if t.state == TrialState.COMPLETE]
    return {
        "default": default,
        "to_beat": to_beat,
        "best": max(done) if done else float("nan"),
        "confirmed": top.mean if top else float("nan"),
        "beats": bool(top and top.test and top.test.beats),
        "baseline": conf.best_baseline,
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
    ap.add_argument("--confirm", type=int, default=3, help="confirmation seeds per study")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe)
    data = dict(recipe.data)
    if args.size:
        data["size"] = args.size
    recipe = recipe.with_overrides(backbone=args.backbone, data=data)
    if args.steps:
        recipe.train = {**recipe.train, "steps": args.steps}
    seeds = [int(s) for s in args.seeds.split(",")]
    print(
        f"{recipe.backbone}, {'x'.join(map(str, recipe.image_size))} px,"
        f" {trial_steps(recipe)} steps a trial, {args.trials} trials"
    )
    print(recipe.gain.describe())
    print(
        f"{'method':28s} {'seed':>4s} {'default dm':>10s} {'to beat':>7s} {'search best':>11s} {'confirmed':>9s}"
        f" {'beats':>5s} {'compute':>7s} {'pruned':>6s} {'wall s':>7s}"
    )
    ms = methods(recipe)
    results: dict[str, list[dict]] = {m: [] for m in ms}
    with tempfile.TemporaryDirectory() as d:
        for seed in seeds:
            for name, method in ms.items():
                r = one_run(recipe, method, seed, args.trials, args.confirm, Path(d))
                results[name].append(r)
                print(
                    f"{name:28s} {seed:4d} {r['default']:+10.2f} {r['to_beat'] or '-':>7} {r['best']:+11.2f}"
                    f" {r['confirmed']:+9.2f} {'yes' if r['beats'] else 'no':>5s} {r['compute']:7.0%}"
                    f" {r['pruned']:6d} {r['wall']:7.0f}",
                    flush=True,
                )
    print("summary (median over study seeds):")
    for name, rs in results.items():
        beat = [r["to_beat"] for r in rs if r["to_beat"]]
        print(
            f"  {name:28s} beat the default in {len(beat)}/{len(rs)} runs"
            f" (median {statistics.median(beat) if beat else '-'} trials),"
            f" confirmed Delta-m of its winner {statistics.median(r['confirmed'] for r in rs):+.2f}"
            f" (beats the best baseline in {sum(r['beats'] for r in rs)}/{len(rs)}),"
            f" compute {statistics.median(r['compute'] for r in rs):.0%} of unpruned"
        )


if __name__ == "__main__":
    main()
