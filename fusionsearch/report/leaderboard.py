"""What a person reads about a study: the leaderboard rows, the live view while it runs, and the
trials table. Everything is read from the storage, so it works for a study that runs elsewhere."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Group
from rich.table import Table
from rich.text import Text

from fusionsearch.search.confirm import Confirmation, summarize
from fusionsearch.search.credentials import mask
from fusionsearch.search.jobs import Job, SupernetTraining
from fusionsearch.search.records import StudyRecord, TrialRecord

__all__ = [
    "counts",
    "plan_summary",
    "trial_rows",
    "trials_table",
    "confirmation_table",
    "live_view",
    "best_trial",
    "headline_metrics",
    "is_ranked",
    "print_summary",
    "search_title",
    "metrics_table",
]

_SHORT = {"nddr": "nddr", "cross_stitch": "cs", "sluice": "sluice"}


def plan_summary(plan: dict[str, Any] | None, partial_loss: str | None = None) -> str:
    """``nddr@layer1,layer2 cs@layer3 | shared to act1 | shortcut``; ``partial_loss``: a searched
    ``train.partial_loss`` rule, shown as ``| partial loss: labelled``."""
    if not plan:
        return "-"
    by_unit: dict[str, list[str]] = {}
    for p in plan.get("at", []):
        unit = plan.get("per_point", {}).get(p, {}).get("unit", plan.get("unit", "nddr"))
        by_unit.setdefault(_SHORT.get(unit, unit), []).append(str(p))
    parts = [f"{u}@{','.join(ps)}" for u, ps in by_unit.items()] or ["no fusion"]
    if plan.get("shared_prefix"):
        parts.append(f"shared to {plan['shared_prefix']}")
    if plan.get("shortcut"):
        parts.append("shortcut")
    if partial_loss:
        parts.append(f"partial loss: {partial_loss}")
    return " | ".join(parts)


def headline_metrics(metrics: dict[str, dict[str, float]] | None, compact: bool = False) -> str:
    """``seg: miou 12.3, pixel_acc 45.6; normal: ...``; ``compact``: each task's first metric only."""
    if not metrics:
        return "-"
    return "; ".join(
        f"{t}: " + ", ".join(f"{m} {v:.3g}" for m, v in list(ms.items())[: 1 if compact else None])
        for t, ms in metrics.items()
    )


def is_ranked(t: FrozenTrial) -> bool:
    """Trials of the search's leaderboard (``Job.ranked``): baselines and sampled plans, not the
    warm start (the others' start), the supernet job (it trains no plan of its own) nor the
    confirmation's repeats (summarised per plan instead)."""
    return Job.of(t).ranked


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One dict per trial: number, kind, state, plan, metrics, objective values, reason."""
    return [row for _, row in _rows(study)]


def _rows(study: optuna.Study) -> list[tuple[Job, dict[str, Any]]]:
    """Each trial's job and its row (``trial_rows``)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        job, record = Job.of(t), TrialRecord(t)
        reason = record.fail_reason or t.system_attrs.get("fail_reason")
        reason = mask(reason) if isinstance(reason, str) else reason  # one stored before reasons were masked
        if t.state == TrialState.FAIL and reason is None:
            reason = "worker died (stale heartbeat)"
        retry_of = t.system_attrs.get("failed_trial")
        row = {
            "number": t.number,
            "kind": job.table_label(t),
            "state": t.state.name.lower(),
            "plan": record.plan,
            "partial_loss": record.partial_loss,
            "metrics": record.metrics,
            "delta_m": record.delta_m,
            "seed": job.own_seed,
            "params": record.params,
            "values": t.values,
            "step": record.step,
            "reason": reason,
            "retry_of": retry_of,
            "duration_s": t.duration.total_seconds() if t.duration else None,
        }
        rows.append((job, row))
    return rows


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state: ``{"complete": 5, "pruned": 2, ...}``."""
    out = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] += 1
    return out


def best_trial(study: optuna.Study, with_fusion: bool = False) -> FrozenTrial | None:
    """The search's best single run, or None before any trial completes.

    One seed: ``summarize`` says what holds over seeds. With one objective, the best complete
    trial; with several, the Pareto trial with the best first objective. ``with_fusion``: only
    trials whose network has fusion units.
    """
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values and is_ranked(t)]
    if with_fusion:
        done = [t for t in done if TrialRecord(t).fusion_artifact]
    if not done:
        return None
    pool = done
    if len(study.directions) > 1:
        pool = [t for t in done if not any(_dominates(o, t, study.directions) for o in done)] or done
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    return max(pool, key=lambda t: sign * t.values[0])


def _dominates(a: FrozenTrial, b: FrozenTrial, directions: list[optuna.study.StudyDirection]) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective and better in one."""
    signs = [1 if d == optuna.study.StudyDirection.MAXIMIZE else -1 for d in directions]
    pairs = [(s * x, s * y) for s, x, y in zip(signs, a.values, b.values)]
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def search_only(study: optuna.Study, sampled: bool = False) -> optuna.Study:
    """An in-memory copy of the study's ranked trials (``sampled``: only the sampled plans), for
    Optuna's figures: the warm start and the confirmation's repeats would otherwise count as
    trials of the search."""
    copy = optuna.create_study(directions=study.directions, study_name=study.study_name)
    keep = [
        t
        for t in study.get_trials(deepcopy=False)
        if (job := Job.of(t)).ranked and (not sampled or job.sampled) and t.state.is_finished()
    ]
    copy.add_trials(keep)
    return copy


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:+.{digits}f}" if digits else f"{v:.3g}"
    return str(v)


def trials_table(study: optuna.Study, title: str | None = None, compact: bool = False) -> Table:
    """The study's trials as a rich table: plan, state, Delta-m, metrics and any failure reason.

    ``compact`` (the leaderboard ``run`` prints): each task's first metric, no failure reasons.
    """
    objectives = StudyRecord(study).objectives(["value"])
    table = Table(title=title or f"study {study.study_name}", title_justify="left")
    cols = ("#", "kind", "state", "plan", *objectives, "metrics", *(() if compact else ("reason",)))
    for col in cols:
        table.add_column(col, overflow="fold")
    best = best_trial(study)
    for job, r in _rows(study):
        if compact and not job.listed:
            continue  # the leaderboard shows the confirmation per plan (confirmation_table)
        values = r["values"] or [None] * len(objectives)
        if not job.scored:  # no plan of its own: no Delta-m
            values = [None if o == "delta_m" else v for o, v in zip(objectives, values)]
        style = "bold green" if best is not None and r["number"] == best.number else None
        table.add_row(
            str(r["number"]),
            r["kind"],
            r["state"] + (f" (retry of {r['retry_of']})" if r["retry_of"] is not None else ""),
            plan_summary(r["plan"], r["partial_loss"]),
            *[_fmt(v) if o == "delta_m" else _fmt(v, 0) for o, v in zip(objectives, values)],
            headline_metrics(r["metrics"], compact),
            *(() if compact else (r["reason"] or "",)),
            style=style,
        )
    return table


def live_view(study: optuna.Study, steps: int) -> Group:
    """Counts, the best so far with its plan, and each running trial's progress."""
    trials = study.get_trials(deepcopy=False)
    n = {s: sum(t.state == s for t in trials) for s in TrialState}
    head = Text(
        f"study {study.study_name}: {n[TrialState.COMPLETE]} done, {n[TrialState.RUNNING]} running,"
        f" {n[TrialState.PRUNED]} pruned, {n[TrialState.FAIL]} failed, {n[TrialState.WAITING]} queued"
    )
    best = best_trial(study)
    lines: list[Any] = [head]
    if best is not None:
        lines.append(
            Text(
                f"best: trial {best.number} ({Job.of(best).table_label(best)}) value {best.values[0]:+.3f}"
                f"  {plan_summary(TrialRecord(best).plan, TrialRecord(best).partial_loss)}"
            )
        )
    running = Table(show_header=True, box=None)
    for col in ("#", "kind", "step", "plan"):
        running.add_column(col)
    for t in trials:
        if t.state == TrialState.RUNNING:
            record = TrialRecord(t)
            step = record.step if record.step is not None else 0
            running.add_row(str(t.number), Job.of(t).table_label(t), f"{step}/{steps}", plan_summary(record.plan))
    if running.row_count:
        lines.append(running)
    return Group(*lines)


def confirmation_table(study: optuna.Study, confirmation: Confirmation | None = None) -> Table | None:
    """Per confirmed plan: Delta-m per seed, mean ± 95% t interval, and the paired test against the
    best baseline (difference, its interval, p); None when the study ran no confirmation."""
    c = confirmation or summarize(study)
    if not c.plans:
        return None
    convention = StudyRecord(study).delta_m_convention or "Delta-m (%)"
    table = Table(
        title=f"confirmation over seeds ({convention}); paired against the best baseline, {c.best_baseline}",
        title_justify="left",
    )
    for col in (
        "plan",
        "kind",
        "seeds",
        "Delta-m mean ± 95% CI",
        f"vs {c.best_baseline}: diff [95% CI], p",
        "beats",
        "search Delta-m",
        "what",
    ):
        table.add_column(col, overflow="fold")
    best = c.best
    for p in c.plans:
        if p.interval is None:
            table.add_row(p.label, "baseline" if p.baseline else "search", "0", "(not run yet)", "", "", "", "")
            continue
        if p.label == c.best_baseline:
            vs, beats = "reference", ""
        else:
            vs = str(p.test) if p.test is not None else "-"
            beats = "yes" if p.test is not None and p.test.beats else "no"
        table.add_row(
            p.label,
            "baseline" if p.baseline else "search",
            str(p.interval.n),
            str(p.interval),
            vs,
            beats,
            _fmt(p.search_delta_m),
            plan_summary(p.plan, p.partial_loss),
            style="bold green" if best is not None and p is best else None,
        )
    return table


def search_title(study: optuna.Study) -> str:
    """The title of the table ``run`` ends with, saying what each row is: in a supernet study the
    plans were ranked on one shared supernet and only its best trained on their own."""
    job = next((t for t in study.get_trials(deepcopy=False) if isinstance(Job.of(t), SupernetTraining)), None)
    if job is None:
        return f"study {study.study_name}: the search (one run per plan)"
    scored = TrialRecord(job).supernet_scored_plans
    ranked = f"{scored} plans scored on one supernet" if scored is not None else "plans scored on one supernet"
    return f"study {study.study_name}: the search ({ranked}; its best each trained stand-alone once)"


def print_summary(
    study: optuna.Study, console: Any, title: str | None = None, compact: bool = False, width: int = 160
) -> Confirmation:
    """Print what a study ends with, as ``run`` and ``trials`` do; return its confirmation.

    The trials table, the confirmation table (when there was one), how Delta-m averages, and the
    verdict in words, on the rich ``console``, at least ``width`` columns wide (a narrow terminal
    folds cells, not rows).
    """
    from rich.console import Console

    wide = Console(width=max(console.width, width), file=console.file)
    wide.print(trials_table(study, title, compact=compact))
    conf = summarize(study)
    table = confirmation_table(study, conf)
    if table is not None:
        wide.print(table)
    console.print(StudyRecord(study).delta_m_convention or "", highlight=False)
    console.print(f"[bold]{conf.verdict()}[/]", highlight=False)
    return conf


def metrics_table(
    title: str,
    metrics: dict[str, dict[str, float]],
    directions: dict[str, dict[str, bool]],
    baseline: dict[str, dict[str, float]] | None = None,
) -> Table:
    """One trained plan's metrics, each with its direction (higher or lower is better) and, with
    ``baseline``, the single-task value beside it (``fusionsearch train``)."""
    table = Table(title=title)
    for col in ("task", "metric", "value", "better", *(["single-task"] if baseline else [])):
        table.add_column(col)
    for t, values in metrics.items():
        for m, v in values.items():
            row = [t, m, f"{v:.2f}", "higher" if directions[t][m] else "lower"]
            table.add_row(*row, *([f"{baseline[t][m]:.2f}"] if baseline else []))
    return table
