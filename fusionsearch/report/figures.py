"""The report's figures, one function each: ours (the placement map, the learned fusion weights,
the task weights, the confirmation over seeds, a single-objective Pareto front) and the guard
around Optuna's (importances, and ``complete`` for the views they draw). A figure that has
nothing to draw yet raises ``NothingToDraw`` saying what is missing, which the report prints in
its place (``drawn``); ``html`` lays them out in the file.
"""

from __future__ import annotations

from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState
from plotly.subplots import make_subplots

from fusionsearch.errors import NothingToDraw
from fusionsearch.report.leaderboard import plan_summary, trial_rows
from fusionsearch.search.confirm import Confirmation, summarize
from fusionsearch.search.jobs import Job
from fusionsearch.search.records import StudyRecord, TrialRecord

__all__ = [
    "MIN_TRIALS_FOR_IMPORTANCES",
    "complete",
    "confirmation_figure",
    "drawn",
    "fusion_weight_figure",
    "importances",
    "pareto",
    "placement_map",
    "task_weight_figure",
]

# Fewer complete searched trials than this give importances that are noise (6 trials drew 12 bars
# all at 0.08): the report says so instead of drawing them.
MIN_TRIALS_FOR_IMPORTANCES = 10


def _ranked_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Complete trials of the search with a Delta-m (not the warm start, not confirmation repeats)."""
    return [
        r
        for r in trial_rows(study)
        if r["state"] == "complete" and r["delta_m"] is not None and not r["kind"].startswith("confirm:")
    ]


def placement_map(study: optuna.Study) -> go.Figure:
    """Mean Delta-m of finished trials with and without fusion at each candidate point."""
    rows = [r for r in _ranked_rows(study) if r["plan"]]
    points: list[str] = []
    for t in study.get_trials(deepcopy=False):
        for name in t.params:
            if name.startswith("unit@") and name[5:] not in points:
                points.append(name[5:])
    for r in rows:
        for p in r["plan"].get("at", []):
            if p not in points:
                points.append(p)
    with_, without = [], []
    for p in points:
        yes = [r["delta_m"] for r in rows if p in r["plan"].get("at", [])]
        no = [r["delta_m"] for r in rows if p not in r["plan"].get("at", [])]
        with_.append(sum(yes) / len(yes) if yes else None)
        without.append(sum(no) / len(no) if no else None)
    methods = _by_weighting(study)
    if not methods:
        fig = go.Figure(
            [
                go.Bar(name="fusion here", x=points, y=with_),
                go.Bar(name="no fusion here", x=points, y=without),
            ]
        )
        fig.update_layout(
            title="Placement map: mean Delta-m (%) of finished trials with / without fusion at each point",
            barmode="group",
            yaxis_title="Delta-m (%)",
        )
        return fig
    fig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3], subplot_titles=("placement", "weighting"))
    fig.add_trace(go.Bar(name="fusion here", x=points, y=with_), row=1, col=1)
    fig.add_trace(go.Bar(name="no fusion here", x=points, y=without), row=1, col=1)
    names = sorted(methods)
    fig.add_trace(
        go.Bar(
            name="weighting",
            x=names,
            y=[sum(methods[n]) / len(methods[n]) for n in names],
            text=[f"n={len(methods[n])}" for n in names],
        ),
        row=1,
        col=2,
    )
    fig.update_layout(
        title="Placement map: mean Delta-m (%) with / without fusion at each point, and per weighting method",
        barmode="group",
        yaxis_title="Delta-m (%)",
    )
    return fig


def _by_weighting(study: optuna.Study) -> dict[str, list[float]]:
    """Delta-m of the finished sampled trials per weighting method, when the study searched it."""
    out: dict[str, list[float]] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        dm = TrialRecord(t).delta_m
        if Job.of(t).sampled and "weighting" in t.params and dm is not None:
            out.setdefault(str(t.params["weighting"]), []).append(float(dm))
    return out


def task_weight_figure(trial: optuna.trial.FrozenTrial) -> go.Figure:
    """The task weights (or the gradient aggregator's effective weights) at each evaluation."""
    evals = [e for e in TrialRecord(trial).evals or [] if e.get("weights")]
    if not evals:
        raise NothingToDraw(f"trial {trial.number} logged no task weights")
    tasks = list(evals[0]["weights"])
    fig = go.Figure(
        [go.Scatter(name=t, x=[e["step"] for e in evals], y=[e["weights"][t] for e in evals], mode="lines+markers")
         for t in tasks]
    )  # fmt: skip
    method = (TrialRecord(trial).weighting or {}).get("name", "the recipe's")
    fig.update_layout(
        title=f"Task weights of trial {trial.number} over training ({method} weighting)",
        xaxis_title="step",
        yaxis_title="weight",
    )
    return fig


def fusion_weight_figure(weights: dict[str, Any], title: str) -> go.Figure:
    """Sorted per-channel weights on the task's own column (same) and on the others (other)."""
    points = list(weights)
    tasks = list(next(iter(weights.values()))["tasks"]) if weights else []
    fig = make_subplots(
        rows=max(1, len(tasks)),
        cols=max(1, len(points)),
        subplot_titles=[f"{t} @ {p} ({weights[p]['unit']})" for t in tasks for p in points],
    )
    for i, t in enumerate(tasks):
        for j, p in enumerate(points):
            w = weights[p]["tasks"][t]
            for kind, color in (("same", "#1f77b4"), ("other", "#d62728")):
                ys = w[kind]
                xs = [k / max(1, len(ys) - 1) for k in range(len(ys))]
                fig.add_trace(
                    go.Scatter(
                        x=xs,
                        y=ys,
                        mode="lines",
                        name=f"{kind}-task",
                        line={"color": color},
                        showlegend=(i == 0 and j == 0),
                    ),
                    row=i + 1,
                    col=j + 1,
                )
    fig.update_layout(title=title, height=260 * max(1, len(tasks)))
    return fig


def confirmation_figure(study: optuna.Study, confirmation: Confirmation | None = None) -> go.Figure:
    """Delta-m per confirmed plan: each seed as a dot, the mean with its 95% t interval, and the
    baselines' intervals as bands across the plot, so a reader sees at once whether a plan's
    interval clears them."""
    c = confirmation or summarize(study)
    done = [p for p in c.plans if p.interval is not None]
    if not done:
        raise NothingToDraw("the study ran no confirmation (or none finished): nothing to draw")
    labels = [p.label for p in done]
    fig = go.Figure()
    palette = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    for i, p in enumerate(q for q in done if q.baseline):
        iv = p.interval
        assert iv is not None
        low, high = (iv.low, iv.high) if iv.n > 1 else (iv.mean, iv.mean)
        color = palette[i % len(palette)]
        fig.add_hrect(y0=low, y1=high, fillcolor=color, opacity=0.12, line_width=0)
        fig.add_hline(y=iv.mean, line_dash="dot", line_color=color, annotation_text=f"{p.label} (baseline)")
    means = [p.mean for p in done]
    err = [p.interval.half_width if p.interval and p.interval.n > 1 else 0.0 for p in done]
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=means,
            error_y={"type": "data", "array": err, "visible": True},
            mode="markers",
            marker={"size": 12, "color": ["#d62728" if not p.baseline else "#555" for p in done]},
            name="mean ± 95% CI",
            text=[f"{plan_summary(p.plan)}; vs {c.best_baseline}: {p.test or 'reference'}" for p in done],
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[p.label for p in done for _ in p.by_seed],
            y=[v for p in done for v in p.by_seed.values()],
            mode="markers",
            marker={"size": 6, "symbol": "circle-open", "color": "#333"},
            name="one seed",
        )
    )
    # the convention is a sentence: as the y title it ran past the plot's height and was cut off
    convention = str(StudyRecord(study).delta_m_convention or "")
    fig.update_layout(
        title={"text": f"Confirmation over seeds: {c.verdict()}", "subtitle": {"text": convention}},
        yaxis={"title": {"text": "Delta-m (%)", "standoff": 10}, "automargin": True},
        margin={"t": 110},  # the title and its subtitle above the plot
    )
    return fig


def importances(study: optuna.Study) -> go.Figure:
    """Importances of the searched parameters for Delta-m, over the complete sampled trials and the
    parameters they all have (with define-by-run, the ones every trial draws). Too few trials give
    noise (6 trials drew 12 bars all at 0.08), so that is an error the report prints instead."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if Job.of(t).sampled]
    if len(done) < MIN_TRIALS_FOR_IMPORTANCES:
        raise NothingToDraw(
            f"{len(done)} complete searched trials; importances need at least {MIN_TRIALS_FOR_IMPORTANCES}"
            " to mean anything (run more --trials)"
        )
    # a single-objective copy that maximises Delta-m: the evaluator reads the direction from the
    # study (PED-ANOVA, Optuna's default, assumes minimisation for a custom target)
    dm = optuna.create_study(direction="maximize")
    dm.add_trials(
        optuna.trial.create_trial(value=t.values[0], params=t.params, distributions=t.distributions) for t in done
    )
    return optuna.visualization.plot_param_importances(dm, target_name="Delta-m")


def pareto(study: optuna.Study, ranked: optuna.Study) -> go.Figure:
    """Delta-m against parameters: Optuna's front for several objectives, else ours (fewer
    parameters first, a trial on the front if it beats every smaller one)."""
    if len(study.directions) > 1:
        return optuna.visualization.plot_pareto_front(complete(ranked, "trial of the search"))
    rows = _ranked_rows(study)
    rows.sort(key=lambda r: r["params"] or 0)
    front, best = [], -float("inf")
    for r in rows:  # fewer parameters first: a trial is on the front if it beats all smaller ones
        if r["delta_m"] > best:
            front.append(r)
            best = r["delta_m"]
    fig = go.Figure(
        [
            go.Scatter(
                x=[r["params"] for r in rows],
                y=[r["delta_m"] for r in rows],
                mode="markers",
                name="trials",
                text=[f"#{r['number']} {r['kind']}: {plan_summary(r['plan'])}" for r in rows],
            ),
            go.Scatter(
                x=[r["params"] for r in front],
                y=[r["delta_m"] for r in front],
                mode="lines+markers",
                name="Pareto front",
            ),
        ]
    )
    fig.update_layout(
        title="Pareto front: Delta-m (%) vs parameters", xaxis_title="parameters", yaxis_title="Delta-m (%)"
    )
    return fig


def complete(view: optuna.Study, what: str) -> optuna.Study:
    """``view`` for one of Optuna's figures, which logs "Your study does not have any completed
    trials" to stderr and draws an empty plot when there is none: that is said in the report."""
    if not view.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise NothingToDraw(f"no complete {what} yet")
    return view


def drawn(name: str, make: Any) -> tuple[str, go.Figure | None, str | None]:
    """``(name, figure, None)``, or ``(name, None, why not)``: what is missing, in words, for a
    figure with nothing to draw yet; a figure library's own failure keeps the report whole."""
    try:
        return name, make(), None
    except NothingToDraw as e:
        return name, None, str(e)
    except Exception as e:
        return name, None, f"drawing it failed: {' '.join(str(e).split()) or type(e).__name__}"
