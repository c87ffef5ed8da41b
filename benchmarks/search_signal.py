"""Can a study's answer be trusted? Seed noise, spread, early-rung ranking, pruning savings and
whether the top plan survives confirmation, for warm-started and from-scratch columns side by side.

    python benchmarks/search_signal.py                               # the default study (recipe quick)
    python benchmarks/search_signal.py --modes single --seeds 5 --trials 8
    python benchmarks/search_signal.py --backbone test_resnet --size 32 --seeds 3   # a smoke run

Per mode (``search.column_init``: ``single`` warm-starts every candidate from the trained
single-task nets, ``scratch`` is the old behaviour) one study runs the recipe's baselines and
``--trials`` sampled plans *without pruning* (every plan to its full budget, evaluated at the
pruner's rungs), then confirms the top plan and the baselines over ``--seeds`` fresh seeds.
Printed per mode:

  (a) seed noise: the standard deviation over the confirmation seeds of one plan's Delta-m
      (nddr_default, the papers' plan; the largest over all confirmed plans beside it);
  (b) the spread of Delta-m across the study's plans (max - min, and their standard deviation);
  (c) Kendall's tau between the plans' ranking at the first rung and at the full budget;
  (d) pruning: the recipe's pruner replayed on the very same intermediate values (Optuna's own
      pruner in a fresh study, trials in the same order): the share of steps it would train,
      and whether its best unpruned plan is the best plan without pruning (an equal best);
  (e) whether the search's top plan still beats the baselines after confirmation (its mean
      above the best baseline's, and the paired test's 95% interval above zero).

Replaying the pruner keeps the sampled plans fixed, which a pruned study would not (TPE learns
from pruned trials differently); it measures what pruning throws away on exactly these plans.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from scipy import stats

from fusionsearch.experiment.recipe import load_recipe
from fusionsearch.search import StudySettings, prepare_confirmation, prepare_study, run_worker
from fusionsearch.search.confirm import summarize
from fusionsearch.search.study import make_pruner, rungs

GOALS = {"a": "<= 1.0 point", "c": ">= 0.6", "d": ">= 3x fewer steps at an equal best"}


def replay_pruner(recipe: Any, settings: StudySettings, trials: list[optuna.trial.FrozenTrial]) -> dict[str, Any]:
    """Run the recipe's pruner over recorded learning curves (baselines first, as a study queues
    them; baselines never stop but set the bar at each rung, as in a real study)."""
    pruning = StudySettings(**{**settings.__dict__, "pruner": recipe.study.get("pruner", "hyperband")})
    pruner = make_pruner(pruning, recipe)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    used, full, kept = 0, 0, []
    for t in trials:
        live = study.ask()
        stopped = False
        steps = sorted(t.intermediate_values)
        for step in steps:
            live.report(t.intermediate_values[step], step)
            last = step == t.user_attrs["steps"]  # as in a study: a finished plan is never stopped
            if "slot" in t.user_attrs and not last and live.should_prune():
                stopped = True
                break
        if "slot" in t.user_attrs:
            used += step if stopped else t.user_attrs["steps"]
            full += t.user_attrs["steps"]
            if not stopped:
                kept.append(t)
        if stopped:
            study.tell(live, state=TrialState.PRUNED)
        else:
            study.tell(live, t.values[0])
    return {"used": used, "full": full, "kept": kept}


def one_mode(recipe: Any, mode: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    search = {**recipe.search, "column_init": mode}
    r = recipe.with_overrides(search=search, confirm={"top": 1, "seeds": args.seeds})
    pruning = StudySettings(pruner=recipe.study.get("pruner", "hyperband"))
    r.train = {**r.train, "eval_steps": rungs(r, pruning)}  # nothing is pruned, but every rung is measured
    url = f"sqlite:///{folder}/{mode}.db"
    settings = StudySettings(
        study=mode,
        storage=url,
        trials=args.trials,
        sampler="tpe",
        pruner="none",
        seed=args.seed,
        confirm_top=1,
        confirm_seeds=args.seeds,
    )
    t0 = time.perf_counter()
    study = prepare_study(r, settings)
    run_worker(mode, url, device="cpu")
    search_s = time.perf_counter() - t0
    prepare_confirmation(study, settings)
    run_worker(mode, url, device="cpu")
    wall = time.perf_counter() - t0
    trials = [t for t in study.get_trials() if t.state == TrialState.COMPLETE and "confirm" not in t.user_attrs]
    trials = [t for t in trials if t.user_attrs.get("baseline") != "warmstart"]
    plans = [t for t in trials if "delta_m" in t.user_attrs]
    dms = [t.user_attrs["delta_m"] for t in plans]
    sampled = [t for t in plans if "slot" in t.user_attrs]
    first = min(min(t.intermediate_values) for t in sampled) if sampled else None
    early = [t.intermediate_values.get(first, math.nan) for t in sampled]
    tau = stats.kendalltau(early, [t.user_attrs["delta_m"] for t in sampled]).statistic if len(sampled) > 2 else None
    replay = replay_pruner(r, settings, sorted(trials, key=lambda t: t.number))
    best_all = max(sampled, key=lambda t: t.user_attrs["delta_m"]) if sampled else None
    best_kept = max(replay["kept"], key=lambda t: t.user_attrs["delta_m"]) if replay["kept"] else None
    conf = summarize(study)
    by = {p.label: p for p in conf.plans if p.interval is not None}
    sd = {label: statistics.stdev(p.by_seed.values()) for label, p in by.items() if len(p.by_seed) > 1}
    top = next((p for p in conf.plans if not p.baseline and p.interval is not None), None)
    base = by.get(conf.best_baseline or "")
    return {
        "mode": mode,
        "a": sd.get("nddr_default"),
        "a_max": max((v for k, v in sd.items() if k != "single"), default=None),
        "b_range": max(dms) - min(dms) if dms else None,
        "b_sd": statistics.stdev(dms) if len(dms) > 1 else None,
        "c": tau,
        "d_share": replay["used"] / replay["full"] if replay["full"] else None,
        "d_equal": best_all is not None and best_kept is not None and best_all.number == best_kept.number,
        "e_top": top.label if top else None,
        "e_above": bool(top and base and top.mean > base.mean),
        "e_beats": bool(top and top.test and top.test.beats),
        "e_text": conf.verdict(),
        "confirmed": {label: str(p.interval) for label, p in by.items()},
        "search_s": search_s,
        "wall_s": wall,
    }


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="quick")
    ap.add_argument("--modes", default="single,scratch", help="column_init values to compare")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=5, help="confirmation seeds (>= 5 for (a))")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    data = dict(recipe.data)
    if args.size:
        data["size"] = args.size
    recipe = recipe.with_overrides(backbone=args.backbone, data=data)
    cfg = recipe.training
    print(
        f"{recipe.name}: {recipe.backbone}, {'x'.join(map(str, recipe.image_size))} px,"
        f" {cfg.steps} steps (scratch and warm start),"
        f" finetune {recipe.search.get('finetune_steps')} steps, {args.trials} trials, {args.seeds} confirmation seeds"
    )
    print(recipe.gain.describe())
    results = []
    with tempfile.TemporaryDirectory() as d:
        for mode in args.modes.split(","):
            res = one_mode(recipe, mode, args, Path(d))
            results.append(res)
            print(f"[{mode}] done in {res['wall_s']:.0f} s (search {res['search_s']:.0f} s)", flush=True)
    rows = [
        ("(a) seed sd of nddr_default's Delta-m", "a", "{:.2f}"),
        ("    largest seed sd of any confirmed plan", "a_max", "{:.2f}"),
        ("(b) Delta-m range across the study's plans", "b_range", "{:.2f}"),
        ("    sd across plans", "b_sd", "{:.2f}"),
        ("(c) Kendall tau, first rung vs full budget", "c", "{:.2f}"),
        ("(d) share of steps pruning trains", "d_share", "{:.0%}"),
        ("    its best is the unpruned best", "d_equal", "{}"),
        ("(e) top plan above the best baseline", "e_above", "{}"),
        ("    and beats it (paired 95% CI > 0)", "e_beats", "{}"),
        ("wall time (s)", "wall_s", "{:.0f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}s}  " + "  ".join(f"{r['mode']:>10s}" for r in results))
    for label, key, fmt in rows:
        print(f"{label:{width}s}  " + "  ".join(f"{_f(r[key], fmt):>10s}" for r in results))
    for r in results:
        print(
            f"[{r['mode']}] confirmed Delta-m (mean ± 95% CI): "
            + ", ".join(f"{k} {v}" for k, v in r["confirmed"].items())
        )
        print(f"[{r['mode']}] {r['e_text']}")
    print("goals: (a) " + GOALS["a"] + "; (c) " + GOALS["c"] + "; (d) " + GOALS["d"])


if __name__ == "__main__":
    main()
