"""The data-starved analysis: per category, the gain of a study's best plan over the single-task
networks against the category's training label count, the cross-stitch paper's headline
(Figure 6: per-class IoU gain of cross-stitch over the one-task network against the class's
training pixels; Figure 5: the same for per-attribute AP; the mean gain over the 10 and the 20
categories with the least data, +4.6 and +4.3 attribute mAP there).

It reads what the study's workers recorded (``search.categories``): each trial's ``per_category``
results and the study's ``category_counts``. The plans compared are the confirmed best (the best
confirmed plan that is not ``single``) and ``single``, each category's value the mean over the
confirmation seeds both completed; without a confirmation, the search's best run and its
``single`` baseline (one seed each, which the figure's title says).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from fusionsearch.errors import NothingToDraw
from fusionsearch.report.leaderboard import best_trial, is_ranked
from fusionsearch.search.confirm import Confirmation, summarize
from fusionsearch.search.jobs import Baseline, Job
from fusionsearch.search.records import StudyRecord, TrialRecord

__all__ = [
    "LEAST",
    "CategoryRow",
    "StarvedTable",
    "least_data_mean",
    "starved_tables",
    "starved_rows",
    "starved_figure",
    "starved_report_figure",
]

LEAST = (10, 20)  # the paper's "categories with the least data"


@dataclass(frozen=True)
class CategoryRow:
    """One category: its training label count and the two plans' results (NaN: no result)."""

    category: str
    count: int
    single: float
    best: float
    name: str = ""

    @property
    def gain(self) -> float:
        return self.best - self.single  # NaN when either is

    @property
    def label(self) -> str:
        return self.name or self.category


def least_data_mean(rows: Sequence[CategoryRow], k: int) -> float | None:
    """Mean gain over the ``k`` categories with the fewest training labels among those with a
    result in both plans (a category without one, NaN, is left out and the next one counts);
    all of them when fewer than ``k`` have one; None when none has."""
    finite = sorted((r for r in rows if math.isfinite(r.gain)), key=lambda r: r.count)[:k]
    return sum(r.gain for r in finite) / len(finite) if finite else None


@dataclass
class StarvedTable:
    """One task's categories, fewest training labels first, for ``best_label`` against single."""

    task: str
    rows: list[CategoryRow]
    best_label: str
    source: str  # "confirmation" or "search"
    runs: int  # seeds averaged per plan

    def means(self, least: Sequence[int] = LEAST) -> dict[int, float | None]:
        return {k: least_data_mean(self.rows, k) for k in least}

    def title(self) -> str:
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:+.2f}"

        where = (
            f"confirmation, mean of {self.runs} seed{'s' * (self.runs != 1)}"
            if self.source == "confirmation"
            else "search runs, one seed each: no confirmation ran"
        )
        n = sum(math.isfinite(r.gain) for r in self.rows)
        means = ", ".join(f"{k} least-data: {fmt(v)}" for k, v in self.means().items())
        return f"{self.task}: {self.best_label} - single per category ({where}); mean gain {means} (of {n})"


def _per_category(trials: Sequence[FrozenTrial], task: str) -> dict[str, float]:
    """Each category's mean over ``trials`` (those with a value for it), NaN where none has."""
    sums: dict[str, list[float]] = {}
    for t in trials:
        for c, v in (TrialRecord(t).per_category or {}).get(task, {}).items():
            sums.setdefault(c, [])
            if v is not None and math.isfinite(v):
                sums[c].append(float(v))
    return {c: (sum(vs) / len(vs) if vs else math.nan) for c, vs in sums.items()}


def _confirmed_pair(study: optuna.Study, conf: Confirmation) -> tuple[str, list[FrozenTrial], list[FrozenTrial]] | None:
    """The best confirmed plan but single and single, their trials over the seeds both completed."""
    done = [p for p in conf.plans if p.interval is not None]
    single = next((p for p in done if p.label == "single"), None)
    best = next((p for p in done if p.label != "single"), None)
    if single is None or best is None:
        return None
    seeds = sorted(set(single.trials) & set(best.trials))
    if not seeds:
        return None
    trials = study.get_trials(deepcopy=False)
    return best.label, [trials[best.trials[s]] for s in seeds], [trials[single.trials[s]] for s in seeds]


def _search_pair(study: optuna.Study) -> tuple[str, list[FrozenTrial], list[FrozenTrial]] | None:
    """The search's best run but single (Delta-m decides when the best is single) and its single
    baseline (the newest complete one)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if is_ranked(t)]
    singles = [t for t in done if Job.of(t) == Baseline("single")]
    others = [t for t in done if Job.of(t) != Baseline("single") and TrialRecord(t).per_category]
    if not singles or not others:
        return None
    best = best_trial(study)
    if best is None or best.number not in {t.number for t in others}:
        best = max(others, key=lambda t: TrialRecord(t).delta_m or -math.inf)
    job = Job.of(best)
    label = f"baseline {job.name}" if isinstance(job, Baseline) else f"trial {best.number}"
    return label, [best], [singles[-1]]


def starved_tables(study: optuna.Study, conf: Confirmation | None = None) -> list[StarvedTable]:
    """One table per task with per-category results in both plans and training label counts."""
    stored = StudyRecord(study)
    counts: Mapping[str, Mapping[str, int]] = stored.category_counts or {}
    names: Mapping[str, Sequence[str]] = stored.category_names or {}
    pair = _confirmed_pair(study, conf or summarize(study))
    source = "confirmation"
    if pair is None:
        pair, source = _search_pair(study), "search"
    if pair is None:
        return []
    label, best_runs, single_runs = pair
    out = []
    for task, task_counts in counts.items():
        best, single = _per_category(best_runs, task), _per_category(single_runs, task)
        if not best or not single:
            continue
        task_names = list(names.get(task, []))
        rows = [
            CategoryRow(
                c,
                int(task_counts.get(c, 0)),
                single.get(c, math.nan),
                best.get(c, math.nan),
                task_names[int(c)] if c.isdigit() and int(c) < len(task_names) else "",
            )
            for c in best
        ]
        rows.sort(key=lambda r: r.count)
        out.append(StarvedTable(task, rows, label, source, len(best_runs)))
    return out


def starved_rows(table: StarvedTable) -> tuple[list[tuple[str, int, float, float, float]], dict[int, float | None]]:
    """The table a terminal prints: (category, count, single, best, gain) fewest labels first, and
    the mean gain over the 10 and the 20 categories with the least data."""
    rows = [(r.label, r.count, r.single, r.best, r.gain) for r in table.rows]
    return rows, table.means()


def _add(fig: go.Figure, table: StarvedTable, row: int, legend: bool) -> None:
    x = [r.label for r in table.rows]
    gains = [r.gain if math.isfinite(r.gain) else None for r in table.rows]
    colors = ["#2ca02c" if (g or 0) >= 0 else "#d62728" for g in gains]
    text = [f"single {r.single:.2f}, best {r.best:.2f}" for r in table.rows]
    fig.add_trace(
        go.Bar(x=x, y=gains, name="gain (best - single)", marker_color=colors, text=text, showlegend=legend),
        row=row,
        col=1,
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[r.count for r in table.rows],
            name="training labels",
            mode="lines+markers",
            line={"color": "#555"},
            showlegend=legend,
        ),
        row=row,
        col=1,
        secondary_y=True,
    )
    fig.update_yaxes(title_text="gain", row=row, col=1, secondary_y=False)
    fig.update_yaxes(title_text="training labels", row=row, col=1, secondary_y=True)


def starved_figure(table: StarvedTable) -> go.Figure:
    """One task: bars = gain per category (fewest training labels left), line = the label count
    on a second axis; the title gives the mean gain over the 10 and 20 least-data categories."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    _add(fig, table, 1, True)
    fig.update_layout(title=table.title(), xaxis_title="category (fewest training labels first)")
    return fig


def starved_report_figure(study: optuna.Study, conf: Confirmation | None = None) -> go.Figure:
    """Every task's data-starved figure in one, a row each (the HTML report's section);
    ``NothingToDraw`` says why there is nothing to draw."""
    tables = starved_tables(study, conf)
    if not tables:
        raise NothingToDraw(_why_not(study))
    fig = make_subplots(
        rows=len(tables),
        cols=1,
        specs=[[{"secondary_y": True}] for _ in tables],
        subplot_titles=[t.title() for t in tables],
    )
    for i, table in enumerate(tables):
        _add(fig, table, i + 1, i == 0)
    fig.update_layout(
        title="Data-starved categories: gain of the best plan over single, fewest training labels first",
        height=380 * len(tables),
    )
    return fig


def _why_not(study: optuna.Study) -> str:
    if StudyRecord(study).category_counts is None:
        return "no trial recorded per-category results (no task defines per_category, or the study predates them)"
    return "no complete single-task run and best plan with per-category results in both yet"
