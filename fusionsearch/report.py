"""The HTML report of a study: Optuna's own plotly figures plus two of ours.

Ours are the placement map (mean Delta-m of finished trials with and without fusion at each
boundary: where fusion pays) and the learned fusion weights of the best trial (per fusion point,
each task's per-channel weights on its own column and on the others, sorted, as in the
cross-stitch paper's Fig. 5). The file is self-contained (plotly.js inline): it opens offline.
"""

from __future__ import annotations

import html
import json
import tempfile
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .leaderboard import best_trial, counts, plan_summary, trial_rows
from .storage import artifact_store

__all__ = ["write_report", "FIGURES", "placement_map", "fusion_weight_figure"]

FIGURES = (
    "optimization history",
    "parameter importances",
    "pareto front",
    "parallel coordinates",
    "placement map",
    "fusion weights",
)


def placement_map(study: optuna.Study) -> go.Figure:
    """Mean Delta-m of finished trials with and without fusion at each candidate point."""
    rows = [r for r in trial_rows(study) if r["state"] == "complete" and r["delta_m"] is not None and r["plan"]]
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


def _pareto(study: optuna.Study) -> go.Figure:
    if len(study.directions) > 1:
        return optuna.visualization.plot_pareto_front(study)
    rows = [r for r in trial_rows(study) if r["state"] == "complete" and r["delta_m"] is not None]
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


def write_report(study: optuna.Study, out: str | Path, storage_url: str, artifacts: str | None = None) -> Path:
    """Write the study's HTML report; returns its path. Figures that need more finished trials
    than there are say so in place of the plot."""
    vis = optuna.visualization
    figs = [
        _safe("optimization history", lambda: vis.plot_optimization_history(study, target_name="Delta-m")),
        _safe("parameter importances", lambda: vis.plot_param_importances(study)),
        _safe("pareto front", lambda: _pareto(study)),
        _safe("parallel coordinates", lambda: vis.plot_parallel_coordinate(study)),
        _safe("placement map", lambda: placement_map(study)),
    ]
    best = best_trial(study)
    fused = best_trial(study, with_fusion=True)
    fw_fig, fw_err = None, "no complete trial has fusion units"
    if fused is not None:
        from optuna.artifacts import download_artifact

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "w.json"
            try:
                download_artifact(
                    artifact_store=artifact_store(storage_url, artifacts),
                    file_path=str(path),
                    artifact_id=fused.user_attrs["fusion_artifact"],
                )
                weights = json.loads(path.read_text())
                title = f"Learned fusion weights of trial {fused.number}, the best with fusion units"
                fw_fig, fw_err = fusion_weight_figure(weights, title), None
            except Exception as e:
                fw_err = f"cannot read the best trial's fusion weights: {e}"
    figs.append(("fusion weights", fw_fig, fw_err))
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
    summary = ", ".join(f"{v} {k}" for k, v in counts(study).items() if v)
    head = f"<h1>fusionsearch study {html.escape(study.study_name)}</h1><p>{html.escape(summary)}</p>"
    if best is not None:
        head += (
            f"<p>Best: trial {best.number}, value {best.values[0]:+.3f}:"
            f" {html.escape(plan_summary(best.user_attrs.get('plan')))}</p>"
        )
    doc = (
        "<!doctype html><html><head><meta charset='utf-8'><title>fusionsearch report</title>"
        "<style>body{font-family:sans-serif;margin:2em} .missing{color:#888}</style></head><body>"
        + head
        + "\n".join(parts)
        + "</body></html>"
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc)
    return out
