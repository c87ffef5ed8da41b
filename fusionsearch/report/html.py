"""The HTML report of a study: Optuna's own plotly figures plus ours (``figures``), laid out in
one file, each missing one replaced by what it lacks.

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
from optuna.trial import FrozenTrial

from fusionsearch.errors import FusionSearchWarning
from fusionsearch.report.figures import (
    complete,
    confirmation_figure,
    drawn,
    fusion_weight_figure,
    importances,
    pareto,
    placement_map,
    task_weight_figure,
)
from fusionsearch.report.leaderboard import best_trial, counts, plan_summary, search_only
from fusionsearch.report.starved import starved_report_figure
from fusionsearch.report.supernet_ranking import has_supernet, supernet_figure
from fusionsearch.search.confirm import Confirmation, summarize
from fusionsearch.search.records import StudyRecord, TrialRecord
from fusionsearch.search.storage import artifact_store

__all__ = ["write_report", "FIGURES"]

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
)  # and "supernet ranking" in a supernet study (report.supernet_ranking)


def write_report(
    study: optuna.Study,
    out: str | Path,
    storage_url: str,
    artifacts: str | None = None,
    to_dashboard: bool = False,
) -> Path:
    """Write the study's HTML report, one self-contained file that opens offline; return its path.

    A figure that needs more finished trials than there are says so in place of the plot.

    Args:
        study: the study.
        out: the file to write.
        storage_url: the study's storage URL (the fusion weights are read from its artefacts).
        artifacts: the artefact folder (default: beside the SQLite file).
        to_dashboard: also store the figures of ``DASHBOARD_FIGURES`` in the study, where
            optuna-dashboard shows them (``run`` does, and ``report --to-dashboard``); otherwise
            the storage is only read.
    """
    conf = summarize(study)
    figs = _study_figures(study, conf)
    best = best_trial(study)
    figs.append(_fusion_weights(_fused_trial(study, conf), storage_url, artifacts))
    figs.append(
        drawn("task weights", lambda: task_weight_figure(best))
        if best is not None
        else ("task weights", None, "no complete trial yet")
    )
    figs.append(drawn("data-starved", lambda: starved_report_figure(study, conf)))
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
        drawn("confirmation", lambda: confirmation_figure(study, conf)),
        drawn(
            "optimization history",
            lambda: vis.plot_optimization_history(
                complete(ranked, "trial of the search"), target=hist_target, target_name="Delta-m"
            ),
        ),
        drawn("parameter importances", lambda: importances(study)),
        drawn("pareto front", lambda: pareto(study, ranked)),
        drawn(
            "parallel coordinates",
            lambda: vis.plot_parallel_coordinate(
                complete(sampled, "sampled trial"), target=hist_target, target_name="Delta-m"
            ),
        ),
        drawn("placement map", lambda: placement_map(study)),
        *([drawn("supernet ranking", lambda: supernet_figure(study))] if has_supernet(study) else []),
    ]


def _fused_trial(study: optuna.Study, conf: Confirmation) -> FrozenTrial | None:
    """The trial whose fusion weights the report shows: the best confirmed plan with fusion units,
    which speaks for the study, else the best single trial with fusion units."""
    fused = best_trial(study, with_fusion=True)
    confirmed = [p for p in conf.plans if p.interval is not None and p.net_trial is not None]
    for p in confirmed:
        t = study.trials[p.net_trial]  # type: ignore[index]
        if TrialRecord(t).fusion_artifact:
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
                    artifact_id=str(TrialRecord(fused).fusion_artifact),  # every fused trial has one
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
    head += f"<p>{html.escape(str(StudyRecord(study).delta_m_convention or 'Delta-m (%)'))}</p>"
    head += f"<p><b>{html.escape(conf.verdict())}</b></p>"
    if conf.best is not None:
        head += (
            f"<p>Best after confirmation: {html.escape(conf.best.label)}, Delta-m {conf.best.interval}"
            f" over seeds: {html.escape(plan_summary(conf.best.plan))}</p>"
        )
    if best is not None:
        head += (
            f"<p>Best single run of the search: trial {best.number}, value {best.values[0]:+.3f}:"
            f" {html.escape(plan_summary(TrialRecord(best).plan))}</p>"
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
