"""The supernet's part of a report: how its scores compare with the stand-alone trainings of
the plans it chose. Its own module because only a supernet study (``search.mode: supernet``)
has it; the HTML report adds it when the study holds a supernet job."""

from __future__ import annotations

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState
from scipy import stats

from fusionsearch.errors import NothingToDraw
from fusionsearch.report.leaderboard import plan_summary
from fusionsearch.search.jobs import ConfirmRun, Job, SupernetTraining
from fusionsearch.search.records import TrialRecord

__all__ = ["has_supernet", "supernet_figure"]


def has_supernet(study: optuna.Study) -> bool:
    return any(isinstance(Job.of(t), SupernetTraining) for t in study.get_trials(deepcopy=False))


def supernet_figure(study: optuna.Study) -> go.Figure:
    """Each complete slot of the search: its plan's supernet score (x) against its stand-alone
    Delta-m (y), with Kendall tau between the two in the title (what the ranking was worth)."""
    rows: list[tuple[float, float, str]] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        r = TrialRecord(t)
        if r.supernet_score is not None and not isinstance(Job.of(t), ConfirmRun) and r.delta_m is not None:
            rows.append((float(r.supernet_score), float(r.delta_m), f"trial {t.number}: {plan_summary(r.plan)}"))
    if len(rows) < 2:
        raise NothingToDraw(f"{len(rows)} complete supernet-scored trial(s): at least 2 are needed")
    xs, ys, names = zip(*rows)
    tau = stats.kendalltau(xs, ys)[0]
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="markers", text=names, hoverinfo="text+x+y"))
    fig.update_layout(
        title=f"supernet score against stand-alone Delta-m ({len(rows)} plans, Kendall tau {tau:+.2f})",
        xaxis_title="supernet score (Delta-m %, no training)",
        yaxis_title="stand-alone Delta-m % (searched hyperparameters)",
    )
    return fig
