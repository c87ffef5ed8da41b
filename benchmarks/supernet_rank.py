"""Does the supernet rank plans as stand-alone training does, and what does a supernet study cost?

    python benchmarks/supernet_rank.py                          # the quick recipe: ranking, then both studies
    python benchmarks/supernet_rank.py --plans 24 --seeds 2 --skip-studies
    python benchmarks/supernet_rank.py --backbone test_resnet --size 32 --steps 8 --plans 6   # a smoke run

**Ranking.** The warm start is trained once (the study seed, ``train.steps``). The supernet is
built from it (``search.supernet_training``: every unit of ``search.units`` at every boundary) and trained
for its default budget, one warm start's worth of path steps, with fair paths. ``--plans``
placement x unit plans that span the space (1 to all boundaries fused, the units drawn at
random, no two alike) are then scored on it (BatchNorm recalibrated per plan, Delta-m on the
validation set), and each is also fine-tuned stand-alone from the warm start as a searched
trial is (``search.finetune_steps`` at ``base_lr x finetune_lr_mult``, the supernet's unit
arguments), with ``--seeds`` fresh seeds, its Delta-m against ``single`` at the same seed.
Printed: Kendall tau and Spearman rho between the supernet score and the stand-alone mean, with
their p-values, and the same between two seeds of the stand-alone runs (how well stand-alone
training ranks itself: the ceiling of any proxy).

**Studies.** ``fusionsearch run`` of the recipe in both modes (``search.mode: trials`` and
``supernet``), each in its own storage: total training steps (path steps: one plan, one batch,
forward and backward) by kind of trial, the wall time, and the confirmed best with its interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from scipy import stats

from fusionsearch.experiment.experiment import WARMSTART, Experiment, WarmStart
from fusionsearch.experiment.recipe import Recipe, load_recipe
from fusionsearch.nets.supernet import NONE_UNIT, plan_of
from fusionsearch.search.confirm import confirm_seeds, t_interval
from fusionsearch.search.supernet_training import (
    build_supernet,
    calibration_images,
    default_steps,
    path_key,
    score_path,
    supernet_unit_args,
    train_supernet,
)

console = Console(emoji=False)


def spanning_paths(points: list[str], units: list[str], n: int, seed: int) -> list[dict[str, str]]:
    """``n`` distinct plans: the number of fused points cycles through 1..len(points), the points
    and their units drawn at random, so the set spans sparse and dense fusion of every unit."""
    rng, out, seen = random.Random(seed), [], set()
    choices = [u for u in units if u != NONE_UNIT]
    k = 0
    while len(out) < n:
        k = k % len(points) + 1
        at = rng.sample(points, k)
        path = {p: (rng.choice(choices) if p in at else NONE_UNIT) for p in points}
        if path_key(path) not in seen:
            seen.add(path_key(path))
            out.append(path)
    return out


def _summary(path: dict[str, str]) -> str:
    return " ".join(f"{p}:{u[:2]}" for p, u in path.items() if u != NONE_UNIT)


def ranking(r: Recipe, n_plans: int, n_seeds: int, tune_steps: int, longer: int, cache_file: str | None) -> None:
    exp, space = Experiment(r), r.space
    t0 = time.perf_counter()
    warm_cfg = r.train_config(seed=exp.seed, progress=False, eval_steps=[])
    warm = WarmStart.of(exp.train(exp.baseline_plan("single"), cfg=warm_cfg, progress=False).net)
    console.print(f"warm start: {warm_cfg.steps} steps, {time.perf_counter() - t0:.0f} s", highlight=False)

    def finetune(seed: int) -> Any:
        cfg = r.train_config(seed=seed, progress=False, eval_steps=[])
        cfg.steps = space.finetune(cfg.steps)
        cfg.base_lr *= space.finetune_lr_mult
        return cfg

    seeds = confirm_seeds(exp.seed, n_seeds)
    cache = json.loads(Path(cache_file).read_text()) if cache_file and Path(cache_file).exists() else {}

    def train_alone(plan: Any, s: int) -> float:
        return exp.delta_m(exp.train(plan, cfg=finetune(s), start=warm).metrics, single[s])

    def cached(store: dict[str, float], key: str, make: Any) -> float:
        if key not in store:
            store[key] = make()
            if cache_file:
                Path(cache_file).write_text(json.dumps(store))
        return store[key]

    single = {
        s: exp.train(exp.baseline_plan("single"), cfg=finetune(s), start=warm).metrics for s in [exp.seed, *seeds]
    }
    nets, runs = {}, {}
    # the default supernet, a longer one (the fix of an undertrained supernet), and one whose units'
    # penalties train only the units (sluice's orthogonality penalty otherwise moves the shared columns)
    for name, times, penalties in (("default", 1, "all"), ("longer", longer, "all"), ("units", 1, "units")):
        sn = build_supernet(exp, warm, seed=exp.seed, space=space)
        cfg = dataclasses.replace(finetune(exp.seed), steps=default_steps(exp, sn) * times)
        nets[name], runs[name] = sn, train_supernet(sn, exp, cfg, penalties=penalties)
        run = runs[name]
        console.print(
            f"supernet {name}: {len(sn.unit_names)} units x {len(sn.point_names)} points, {run.steps} steps ="
            f" {run.path_steps} path steps, {run.seconds:.0f} s; loss {run.losses[0]:.3f} -> {run.losses[-1]:.3f}",
            highlight=False,
        )
    sn, run = nets["default"], runs["default"]
    cfg = dataclasses.replace(finetune(exp.seed), steps=default_steps(exp, sn))
    paths = spanning_paths(sn.point_names, sn.unit_names, n_plans, exp.seed)
    images, val = calibration_images(exp, cfg, cfg.bn_calibration_batches), exp.datasets()[1]
    args = supernet_unit_args(space, len(r.tasks))
    tune = dataclasses.replace(finetune(exp.seed), steps=tune_steps, eval_steps=[])
    short = dataclasses.replace(tune, steps=tune_steps // 2)
    variants: dict[str, dict[str, Any]] = {  # the fixes for weight-sharing rankings, on the same plans
        "running BatchNorm": {"recalibrate": "off"},
        "BatchNorm recalibrated": {},
        "fusion BatchNorm only": {"recalibrate": "fusion"},
        f"+ {short.steps}-step fine-tune": {"finetune": short},
        f"+ {short.steps}-step fine-tune, fusion BatchNorm only": {"finetune": short, "recalibrate": "fusion"},
        f"+ {tune_steps}-step fine-tune (default)": {"finetune": tune},
        f"+ {tune_steps}-step fine-tune, fusion BatchNorm only": {"finetune": tune, "recalibrate": "fusion"},
        f"+ {tune_steps}-step fine-tune, running BatchNorm": {"finetune": tune, "recalibrate": "off"},
        f"x{longer} supernet + {tune_steps}-step fine-tune": {"sn": nets["longer"], "finetune": tune},
        f"penalties train units only + {short.steps}-step fine-tune": {"sn": nets["units"], "finetune": short},
        f"penalties train units only + {tune_steps}-step fine-tune": {"sn": nets["units"], "finetune": tune},
        f"no supernet: {short.steps} stand-alone steps from the warm start": {"alone": short},
        f"no supernet: {tune_steps} stand-alone steps from the warm start": {"alone": tune},
    }
    rows, scores, seconds = [], {v: [] for v in variants}, dict.fromkeys(variants, 0.0)
    for path in paths:
        for v, kw in variants.items():
            t1 = time.perf_counter()
            net, imgs = kw.get("sn", sn), kw.get("images", images)
            if "alone" in kw:  # the control: how much of the ranking the short fine-tune alone gives
                got = exp.train(plan_of(path, args), cfg=kw["alone"], start=warm).metrics
                scores[v].append(exp.delta_m(got, single[exp.seed]))
            else:
                kw = {k: a for k, a in kw.items() if k not in ("sn", "images")}
                scores[v].append(score_path(net, path, exp, single[exp.seed], imgs, val, **kw)[0])
            seconds[v] += time.perf_counter() - t1
        plan = plan_of(path, args)
        alone = [cached(cache, f"{path_key(path)}@{s}", lambda p=plan, s=s: train_alone(p, s)) for s in seeds]
        rows.append((path, alone))
        got = ", ".join(f"{scores[v][-1]:+.2f}" for v in variants)
        console.print(f"{_summary(path)}: supernet {got}; stand-alone {[round(a, 2) for a in alone]}", highlight=False)
    _print_ranking(rows, scores, seconds, seeds, run, space.finetune(r.training.steps))


def _print_ranking(
    rows: list[Any], scores: dict[str, list[float]], seconds: dict[str, float], seeds: list[int], run: Any, steps: int
) -> None:
    means = [statistics.fmean(a) for _, a in rows]
    default = next(v for v in scores if v.endswith("(default)"))
    table = Table(title=f"supernet score vs stand-alone Delta-m ({len(rows)} plans, {len(seeds)} seeds each)")
    for col in ("plan", *scores, "stand-alone mean", "95% CI"):
        table.add_column(col)
    for i in sorted(range(len(rows)), key=lambda i: -scores[default][i]):
        iv = t_interval(rows[i][1])
        cells = [f"{scores[v][i]:+.2f}" for v in scores]
        table.add_row(_summary(rows[i][0]), *cells, f"{means[i]:+.2f}", f"[{iv.low:+.2f}, {iv.high:+.2f}]")
    Console(width=180, emoji=False).print(table)
    say = lambda m: console.print(m, highlight=False)
    for v, xs in scores.items():
        tau, p_tau = stats.kendalltau(xs, means)
        rho, p_rho = stats.spearmanr(xs, means)
        rank = sorted(means, reverse=True).index(means[max(range(len(xs)), key=lambda i: xs[i])]) + 1
        say(
            f"{v}: Kendall tau {tau:+.3f} (p = {p_tau:.3g}), Spearman rho {rho:+.3f} (p = {p_rho:.3g});"
            f" its best plan is #{rank} of {len(rows)} stand-alone; {seconds[v] / len(rows):.1f} s per plan"
        )
    if len(seeds) >= 2:
        a, b = [x[1][0] for x in rows], [x[1][1] for x in rows]
        ceiling = stats.kendalltau(a, b)[0]
        say(f"stand-alone seed {seeds[0]} vs seed {seeds[1]}: Kendall tau {ceiling:+.3f} (how well one seed ranks)")
    say(f"cost: the supernet {run.path_steps} path steps; the stand-alone runs above {len(rows) * len(seeds) * steps}")


def study_costs(r: Recipe, folder: Path) -> None:
    from fusionsearch.search import StudySettings, run_study

    table = Table(title=f"recipe {r.name}: a per-trial study against a supernet study")
    for col in ("mode", "warm start", "baselines", "supernet", "search", "confirmation", "total", "min", "best"):
        table.add_column(col)
    for mode in ("trials", "supernet"):
        rm = dataclasses.replace(r, search={**r.search, "mode": mode})
        settings = StudySettings.from_recipe(rm, storage=f"sqlite:///{folder}/{mode}.db", artifacts=str(folder / mode))
        t0 = time.perf_counter()
        done = run_study(rm, settings, ["cpu"], quiet=True, log=lambda m: None, note=lambda m: console.print(m))
        steps = _steps_by_kind(done.study)
        best = done.confirmation.best
        table.add_row(
            mode,
            *(str(steps[k]) for k in ("warm", "baselines", "supernet", "search", "confirmation")),
            str(sum(steps.values())),
            f"{(time.perf_counter() - t0) / 60:.1f}",
            f"{best.label}: {best.interval}" if best is not None else "-",
        )
        console.print(f"{mode}: {done.confirmation.verdict()}", highlight=False)
        for plan in done.confirmation.plans:  # what each confirmed searched plan is
            if plan.label.startswith("trial "):
                params = done.study.trials[int(plan.label.split()[1])].params
                shown = {k: v for k, v in params.items() if v != "none"}
                console.print(f"  {plan.label}: {shown}", highlight=False)
    Console(width=180, emoji=False).print(table)


def _steps_by_kind(study: Any) -> dict[str, int]:
    out = dict.fromkeys(("warm", "baselines", "supernet", "search", "confirmation"), 0)
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        kind = (
            "warm"
            if a.get("baseline") == WARMSTART
            else "baselines"
            if "baseline" in a
            else "supernet"
            if a.get("supernet") is not None
            else "confirmation"
            if "confirm" in a
            else "search"
        )
        out[kind] += int(a.get("path_steps", a.get("steps", a.get("step", 0))))  # a pruned trial: its last step
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="quick")
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="warm-start steps (default: the recipe's)")
    ap.add_argument("--plans", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=2)
    tune_help = "fine-tune steps of the scoring (default: search.supernet_score_steps), and half"
    ap.add_argument("--tune-steps", type=int, default=None, help=tune_help)
    ap.add_argument("--longer", type=int, default=4, help="the longer supernet's budget, x the default")
    ap.add_argument("--cache", default=None, help="JSON file of stand-alone Delta-m, reused by a rerun")
    ap.add_argument("--skip-ranking", action="store_true")
    ap.add_argument("--skip-studies", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None, help="the study seed (default: the recipe's): another draw")
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
    if args.seed is not None:  # the warm start, the supernet, the plans and the stand-alone seeds
        r.study = {**r.study, "seed": args.seed}
    r.__post_init__()
    t0 = time.perf_counter()
    if not args.skip_ranking:
        tune = args.tune_steps or r.space.supernet_score_steps
        ranking(r, args.plans, args.seeds, tune, args.longer, args.cache)
    if not args.skip_studies:
        with tempfile.TemporaryDirectory() as d:
            study_costs(r, Path(d))
    console.print(f"total {time.perf_counter() - t0:.0f} s", highlight=False)


if __name__ == "__main__":
    main()
