"""The HTML report of a study: Optuna's own plotly figures plus ours.

Ours are the placement map (mean Delta-m of finished trials with and without fusion at each
boundary: where fusion pays), the learned fusion weights of the best trial (per fusion point,
each task's per-channel weights on its own column and on the others, sorted, as in the
cross-stitch paper's Fig. 5) and the data-starved analysis (``report.starved``: per category,
the best plan's gain over single against its training label count). The file is self-contained
(plotly.js inline): it opens offline.
"""

from __future__ import annotations

import html
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from fusionsearch.errors import FusionSearchWarning
from fusionsearch.report.leaderboard import best_trial, counts, plan_summary, search_only, trial_rows
from fusionsearch.report.starved import starved_report_figure
from fusionsearch.report.supernet import has_supernet, supernet_figure
from fusionsearch.search.confirm import Confirmation, summarize
from fusionsearch.search.storage import artifact_store

__all__ = [
    "write_report",
    "FIGURES",
    "placement_map",
    "fusion_weight_figure",
    "confirmation_figure",
    "importances",
    "task_weight_figure",
]

FIGURES = (
    "confirmation",
    "optimization history",
    "parameter importances",
    "pareto front",
    "parallel coordinates",
    "placement map",
    "fusion weights",
    "task weights",
    "data-starved",
)  # and "supernet ranking" in a supernet study (report.supernet)
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
    from plotly.subplots import make_subplots

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
        if "slot" in t.user_attrs and "weighting" in t.params and t.user_attrs.get("delta_m") is not None:
            out.setdefault(str(t.params["weighting"]), []).append(float(t.user_attrs["delta_m"]))
    return out


def task_weight_figure(trial: optuna.trial.FrozenTrial) -> go.Figure:
    """The task weights (or the gradient aggregator's effective weights) at each evaluation."""
    evals = [e for e in trial.user_attrs.get("evals", []) if e.get("weights")]
    if not evals:
        raise ValueError(f"trial {trial.number} logged no task weights")
    tasks = list(evals[0]["weights"])
    fig = go.Figure(
        [go.Scatter(name=t, x=[e["step"] for e in evals], y=[e["weights"][t] for e in evals], mode="lines+markers")
         for t in tasks]
    )  # fmt: skip
    method = (trial.user_attrs.get("weighting") or {}).get("name", "the recipe's")
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
        raise ValueError("the study ran no confirmation (or none finished): nothing to draw")
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
    fig.update_layout(
        title=f"Confirmation over seeds: {c.verdict()}",
        yaxis_title=str(study.user_attrs.get("delta_m_convention", "Delta-m (%)")),
    )
    return fig


def importances(study: optuna.Study) -> go.Figure:
    """Importances of the searched parameters for Delta-m, over the complete sampled trials and the
    parameters they all have (with define-by-run, the ones every trial draws). Too few trials give
    noise (6 trials drew 12 bars all at 0.08), so that is an error the report prints instead."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "slot" in t.user_attrs]
    if len(done) < MIN_TRIALS_FOR_IMPORTANCES:
        raise ValueError(
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


def _pareto(study: optuna.Study, ranked: optuna.Study) -> go.Figure:
    if len(study.directions) > 1:
        return optuna.visualization.plot_pareto_front(ranked)
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


def _safe(name: str, make: Any) -> tuple[str, go.Figure | None, str | None]:
    try:
        return name, make(), None
    except Exception as e:  # too few trials for a figure: say so in the report
        return name, None, f"{type(e).__name__}: {e}"


def write_report(
    study: optuna.Study,
    out: str | Path,
    storage_url: str,
    artifacts: str | None = None,
    to_dashboard: bool = False,
) -> Path:
    """Write the study's HTML report; returns its path. Figures that need more finished trials
    than there are say so in place of the plot.

    ``to_dashboard`` also stores the figures in ``DASHBOARD_FIGURES`` in the study, where
    optuna-dashboard shows them: ``run`` does, and ``report --to-dashboard``. A plain ``report``
    only reads the storage (a journal storage would otherwise grow by each call's figures)."""
    conf = summarize(study)
    figs = _study_figures(study, conf)
    best = best_trial(study)
    figs.append(_fusion_weights(_fused_trial(study, conf), storage_url, artifacts))
    figs.append(
        _safe("task weights", lambda: task_weight_figure(best))
        if best is not None
        else ("task weights", None, "no complete trial yet")
    )
    figs.append(_safe("data-starved", lambda: starved_report_figure(study, conf)))
    doc = (
        "<!doctype html><html><head><meta charset='utf-8'><title>fusionsearch report</title>"
        "<style>body{font-family:sans-serif;margin:2em} .missing{color:#888}</style></head><body>"
        + _header(study, conf, best)
        + "\n".join(_sections(figs))
        + "</body></html>"
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc)
    if to_dashboard:
        _figures_to_dashboard(study, figs)
    return out


def _study_figures(study: optuna.Study, conf: Confirmation) -> list[tuple[str, go.Figure | None, str | None]]:
    """The figures of the study as a whole: confirmation, Optuna's history, importances, Pareto
    front and parallel coordinates (of the search's own trials), and the placement map."""
    vis = optuna.visualization
    ranked, sampled = search_only(study), search_only(study, sampled=True)
    hist_target = None if len(study.directions) == 1 else (lambda t: t.values[0])
    return [
        _safe("confirmation", lambda: confirmation_figure(study, conf)),
        _safe(
            "optimization history",
            lambda: vis.plot_optimization_history(ranked, target=hist_target, target_name="Delta-m"),
        ),
        _safe("parameter importances", lambda: importances(study)),
        _safe("pareto front", lambda: _pareto(study, ranked)),
        _safe(
            "parallel coordinates",
            lambda: vis.plot_parallel_coordinate(sampled, target=hist_target, target_name="Delta-m"),
        ),
        _safe("placement map", lambda: placement_map(study)),
        *([_safe("supernet ranking", lambda: supernet_figure(study))] if has_supernet(study) else []),
    ]


def _fused_trial(study: optuna.Study, conf: Confirmation) -> FrozenTrial | None:
    """The trial whose fusion weights the report shows: the best confirmed plan with fusion units,
    which speaks for the study, else the best single trial with fusion units."""
    fused = best_trial(study, with_fusion=True)
    confirmed = [p for p in conf.plans if p.interval is not None and p.net_trial is not None]
    for p in confirmed:
        t = study.trials[p.net_trial]  # type: ignore[index]
        if t.user_attrs.get("fusion_artifact"):
            return t
    return fused


def _fusion_weights(
    fused: FrozenTrial | None, storage_url: str, artifacts: str | None
) -> tuple[str, go.Figure | None, str | None]:
    """The fusion weights figure of ``fused``, read from its artifact, or why it is not drawn."""
    fw_fig: Any = None
    fw_err: str | None = "no complete trial has fusion units"
    if fused is not None:
        from optuna.artifacts import download_artifact

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "w.json"
            try:
                download_artifact(
                    artifact_store=artifact_store(storage_url, artifacts, create=False),
                    file_path=str(path),
                    artifact_id=fused.user_attrs["fusion_artifact"],
                )
                weights = json.loads(path.read_text())
                title = f"Learned fusion weights of trial {fused.number}, the best with fusion units"
                fw_fig, fw_err = fusion_weight_figure(weights, title), None
            except Exception as e:
                fw_err = f"cannot read the best trial's fusion weights: {e}"
    return "fusion weights", fw_fig, fw_err


def _sections(figs: list[tuple[str, go.Figure | None, str | None]]) -> list[str]:
    """One HTML section per figure (or the reason it is missing); plotly.js is inlined once, with
    the first figure drawn, so the file opens offline."""
    parts = []
    first = True
    for name, fig, err in figs:
        parts.append(f'<section id="{name.replace(" ", "-")}"><h2>{html.escape(name.capitalize())}</h2>')
        if fig is not None:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=first))
            first = False
        else:
            parts.append(f"<p class='missing'>Not drawn: {html.escape(str(err))}</p>")
        parts.append("</section>")
    return parts


def _header(study: optuna.Study, conf: Confirmation, best: FrozenTrial | None) -> str:
    """The report's head: the study's name and trial counts, its Delta-m convention, the verdict,
    the best confirmed plan and the best single run of the search."""
    summary = ", ".join(f"{v} {k}" for k, v in counts(study).items() if v)
    head = f"<h1>fusionsearch study {html.escape(study.study_name)}</h1><p>{html.escape(summary)}</p>"
    head += f"<p>{html.escape(str(study.user_attrs.get('delta_m_convention', 'Delta-m (%)')))}</p>"
    head += f"<p><b>{html.escape(conf.verdict())}</b></p>"
    if conf.best is not None:
        head += (
            f"<p>Best after confirmation: {html.escape(conf.best.label)}, Delta-m {conf.best.interval}"
            f" over seeds: {html.escape(plan_summary(conf.best.plan))}</p>"
        )
    if best is not None:
        head += (
            f"<p>Best single run of the search: trial {best.number}, value {best.values[0]:+.3f}:"
            f" {html.escape(plan_summary(best.user_attrs.get('plan')))}</p>"
        )
    return head


def _figures_to_dashboard(study: optuna.Study, figs: list[tuple[str, go.Figure | None, str | None]]) -> None:
    """Copy the drawn ``DASHBOARD_FIGURES`` into the study; a failure only warns, as the HTML file
    is already written."""
    for name, fig, _ in figs:
        if fig is not None and name in DASHBOARD_FIGURES:
            try:
                _to_dashboard(study, name, fig)
            except Exception as e:  # the HTML file is written; the dashboard copy is a bonus
                warnings.warn(
                    f"{name} not saved for optuna-dashboard: {type(e).__name__}: {e}", FusionSearchWarning, stacklevel=3
                )


DASHBOARD_FIGURES = ("confirmation", "placement map", "fusion weights")


def _to_dashboard(study: optuna.Study, name: str, fig: go.Figure) -> None:
    """Show one of our figures in optuna-dashboard too (its plotly graph objects panel); a fixed id
    per figure, so a later report replaces it instead of adding another."""
    from optuna_dashboard import save_plotly_graph_object

    save_plotly_graph_object(study, fig, graph_object_id="fusionsearch-" + name.replace(" ", "-"))
