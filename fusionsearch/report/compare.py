"""The papers' comparison tables, ours beside theirs.

A comparison is a study whose baselines are the table's rows (single-task, the multi-task
baseline, cross-stitch, sluice and NDDR at the recipe's points, all under the same budget), plus a
few searched trials whose best plan is the last row. Each cell shows our value and, where the
recipe quotes it, the paper's; Delta-m is against the single-task row of the same source.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from fusionsearch.experiment.experiment import COMPARE_ROWS, Experiment
from fusionsearch.experiment.recipe import Recipe, RecipeError
from fusionsearch.report.leaderboard import plan_summary
from fusionsearch.search.confirm import summarize
from fusionsearch.search.jobs import Baseline, Job
from fusionsearch.search.records import TrialRecord
from fusionsearch.search.settings import StudySettings, labelled_suffix

__all__ = [
    "Comparison",
    "compare_rows",
    "build_comparison",
    "paper_comparison",
    "is_grid",
    "DEFAULT_ROWS",
    "comparison_settings",
]

# paper row name -> the baseline that trains it
DEFAULT_ROWS = {
    "single_task": "single",
    "multi_task_baseline": "shared",
    "cross_stitch": "cross_stitch_default",
    "sluice": "sluice_default",
    "nddr": "nddr_default",
}
SEARCH_ROW = "search_best"


def is_grid(recipe: Recipe) -> bool:
    """An ablation recipe: its rows are the points of a grid study (``compare.grid_rows``)."""
    return recipe.defaults.sampler == "grid"


def comparison_settings(
    recipe: Recipe,
    *,
    study: str | None = None,
    storage: str | None = None,
    trials: int | None = None,
    artifacts: str | None = None,
    confirm_seeds: int | None = None,
    labelled: Mapping[str, float | str] | None = None,
    experiment: Experiment | None = None,
) -> StudySettings:
    """The settings of the study behind a comparison table (``fusionsearch compare``).

    Its rows are the baselines (single first); every row runs its whole budget (no pruning); the
    searched row's trials are every grid point of a grid recipe, else ``trials`` or the recipe's
    ``compare.search_trials`` (4).

    Args:
        recipe: a paper's recipe (``fusionsearch list recipes``).
        study: the study's name (default: from the recipe).
        confirm_seeds: fresh seeds that retrain the rows (default: the recipe's).
        labelled: per task, the share of training images (or a file of ids) that keep its label.
        experiment: the recipe made concrete, where the caller has one.
    """
    exp = experiment or Experiment(recipe)
    exp.check_fusion_tasks()
    grid = is_grid(recipe)
    if grid:
        n = len(exp.grid_points())
    else:
        n = trials if trials is not None else int(recipe.compare.get("search_trials", 4))
    settings = StudySettings(
        study=study or f"{recipe.name}-compare{labelled_suffix(labelled)}",
        trials=n,
        sampler="grid" if grid else recipe.defaults.sampler,
        pruner="none",  # every row of a table runs its whole budget
        baselines=list(dict.fromkeys(["single", *compare_rows(recipe).values()])),
        artifacts=artifacts,
        seed=int(recipe.defaults.seed),
        confirm_top=recipe.confirmation.top,
        confirm_seeds=confirm_seeds if confirm_seeds is not None else recipe.confirmation.seeds,
    )
    if storage is not None:
        settings.storage = storage
    return settings


def compare_rows(recipe: Recipe) -> dict[str, str]:
    """Paper row -> baseline name, from the recipe's ``compare.rows`` or the NDDR-CNN table order
    (a grid recipe's only baseline is the single-task one, for Delta-m)."""
    if is_grid(recipe):
        return {"single_task": "single"}
    rows = dict(recipe.compare.get("rows", DEFAULT_ROWS))
    bad = [
        b
        for b in rows.values()
        if b not in COMPARE_ROWS and not str(b).endswith("_default") and not str(b).startswith("split@")
    ]
    if bad:
        raise RecipeError(f"compare rows name unknown baselines {bad}; use {', '.join(COMPARE_ROWS)}")
    return rows


@dataclass
class Comparison:
    """The table: columns (task, metric, higher is better) and rows of our / the paper's values."""

    title: str
    columns: list[tuple[str, str, bool]]
    rows: list[dict[str, Any]]
    convention: str = ""  # how Delta-m averages, for ours and the paper's alike

    def _cell(self, ours: float | None, paper: float | None) -> str:
        a = "-" if ours is None else f"{ours:.2f}"
        return a if paper is None else f"{a} ({paper:g})"

    def _dm(self, v: float | None) -> str:
        return "-" if v is None else f"{v:+.2f}"

    def header(self) -> list[str]:
        """The table's column titles (an arrow says whether higher is better)."""
        cols = [f"{t} {m} {'↑' if hi else '↓'}" for t, m, hi in self.columns]
        return ["row", *cols, "Delta-m %", "Delta-m over seeds (mean ± 95% CI)", "beats best baseline", "plan"]

    def cells(self) -> list[list[str]]:
        """The table's rows as text: ours, the paper's in brackets."""
        out = []
        for r in self.rows:
            vals = [self._cell(r["ours"].get(t, {}).get(m), r["paper"].get(t, {}).get(m)) for t, m, _ in self.columns]
            dm = self._dm(r["dm"]) + (f" ({r['paper_dm']:+.2f})" if r["paper_dm"] is not None else "")
            out.append([r["label"], *vals, dm, r.get("confirmed", "-"), r.get("beats", "-"), r["plan"]])
        return out

    def rich(self) -> Any:
        """The table for a terminal (``fusionsearch compare`` prints it)."""
        from rich.table import Table

        table = Table(title=self.title + "  (ours, the paper's in brackets)", title_justify="left")
        for col in self.header():
            table.add_column(col, overflow="fold")
        for row in self.cells():
            table.add_row(*row)
        return table

    def markdown(self) -> str:
        """The table in Markdown."""
        lines = [f"## {self.title}", "", "Ours (the paper's in brackets). " + self.convention, ""]
        head = self.header()
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in self.cells()]
        return "\n".join(lines) + "\n"

    def save(self, folder: str | Path, name: str) -> tuple[Path, Path]:
        """Write ``NAME-compare.md`` and ``NAME-compare.csv`` into ``folder`` (made if missing)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        md, table = out / f"{name}-compare.md", out / f"{name}-compare.csv"
        md.write_text(self.markdown())
        table.write_text(self.csv())
        return md, table

    def csv(self) -> str:
        """The table in CSV, one row per value source (ours, the paper's)."""
        buf = io.StringIO()
        w = csv.writer(buf)
        cols = [f"{t}/{m}" for t, m, _ in self.columns]
        w.writerow(["row", "source", *cols, "delta_m", "delta_m_mean", "delta_m_ci_low", "delta_m_ci_high", "plan"])
        for r in self.rows:
            iv = r.get("interval")
            w.writerow(
                [
                    r["label"],
                    "ours",
                    *[r["ours"].get(t, {}).get(m, "") for t, m, _ in self.columns],
                    "" if r["dm"] is None else r["dm"],
                    *(("", "", "") if iv is None else (iv.mean, iv.low, iv.high)),
                    r["plan"],
                ]
            )
            if r["paper"]:
                w.writerow(
                    [
                        r["label"],
                        "paper",
                        *[r["paper"].get(t, {}).get(m, "") for t, m, _ in self.columns],
                        "" if r["paper_dm"] is None else r["paper_dm"],
                        "",
                        "",
                        "",
                        "",
                    ]
                )
        return buf.getvalue()


def _columns(recipe: Recipe, exp: Experiment) -> list[tuple[str, str, bool]]:
    directions = exp.directions()
    wanted: Mapping[str, list[str]] = recipe.compare.get("columns") or {t: list(d) for t, d in directions.items()}
    cols = []
    for t, metrics in wanted.items():
        for m in metrics:
            if t not in directions or m not in directions[t]:
                raise RecipeError(f"compare column {t}/{m} is not a metric of the recipe's tasks")
            cols.append((t, m, directions[t][m]))
    return cols


def build_comparison(study: optuna.Study, recipe: Recipe, experiment: Experiment | None = None) -> Comparison:
    """The comparison table of a finished comparison study, our values beside the paper's.

    Rows: the recipe's baselines, its ablation (grid) rows and the search's best trial, each with
    its confirmation where it has one.
    """
    exp = experiment or Experiment(recipe)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    searched = [t for t in trials if Job.of(t).sampled and TrialRecord(t).delta_m is not None]
    paper_dm = _paper_delta_m(recipe, exp.directions())
    rows = _baseline_rows(recipe, exp, trials, paper_dm) + _grid_rows(recipe, searched, paper_dm)
    if searched and not is_grid(recipe):
        rows.append(_search_row(searched))
    _add_confirmations(study, rows)
    title = recipe.paper.get("table") or f"{recipe.name}: {recipe.backbone}, {', '.join(recipe.tasks)}"
    return Comparison(str(title), _columns(recipe, exp), rows, recipe.gain.describe())


def paper_comparison(recipe: Recipe, why: str = "no data", experiment: Experiment | None = None) -> Comparison:
    """The paper's table alone, our cells empty.

    What ``compare`` prints when the recipe's data is not on this machine: the published numbers
    are there to read, and nothing looks measured. ``why`` says what is missing.
    """
    exp = experiment or Experiment(recipe)
    paper_dm = _paper_delta_m(recipe, exp.directions())
    paper_rows: Mapping[str, Any] = recipe.paper.get("rows", {})
    trained = compare_rows(recipe)
    labels = list(dict.fromkeys([*trained, *paper_rows]))
    rows = [
        {
            "label": label,
            "ours": {},
            "paper": paper_rows.get(label, {}),
            "dm": None,
            "paper_dm": paper_dm(paper_rows.get(label)),
            "plan": f"not run: {why}" if label in trained else "not a row fusionsearch trains",
        }
        for label in labels
    ]
    title = recipe.paper.get("table") or f"{recipe.name}: {recipe.backbone}, {', '.join(recipe.tasks)}"
    return Comparison(str(title), _columns(recipe, exp), rows, recipe.gain.describe())


def _paper_delta_m(recipe: Recipe, directions: dict[str, dict[str, bool]]) -> Callable[[Any], float | None]:
    """Delta-m of a paper row against the paper's own single-task row, on the metrics both quote
    (None where the paper has no single-task row or the two share no metric)."""
    paper_single = recipe.paper.get("rows", {}).get("single_task")

    def paper_dm(metrics: Mapping[str, Any] | None) -> float | None:
        if not metrics or not paper_single:
            return None
        shared = {t: {m: v for m, v in ms.items() if m in paper_single.get(t, {})} for t, ms in metrics.items()}
        dirs = {t: {m: directions[t][m] for m in ms if m in directions.get(t, {})} for t, ms in shared.items()}
        try:
            return recipe.gain(shared, paper_single, dirs, skip_zero=True)
        except (KeyError, ValueError):
            return None

    return paper_dm


def _baseline_rows(
    recipe: Recipe, exp: Experiment, trials: list[FrozenTrial], paper_dm: Callable[[Any], float | None]
) -> list[dict[str, Any]]:
    """One row per paper row the recipe compares (``compare_rows``), from the trial of its baseline;
    Delta-m against our single-task trial."""
    paper_rows: Mapping[str, Any] = recipe.paper.get("rows", {})
    by_baseline = {job.name: t for t in trials if isinstance(job := Job.of(t), Baseline)}
    single = by_baseline.get("single")
    rows = []
    for label, baseline in compare_rows(recipe).items():
        t = by_baseline.get(baseline)
        ours = _metrics(t) if t is not None else {}
        rows.append(
            {
                "label": label,
                "ours": ours,
                "paper": paper_rows.get(label, {}),
                "dm": exp.delta_m(ours, _metrics(single)) if t is not None and single else None,
                "paper_dm": paper_dm(paper_rows.get(label)),
                "plan": plan_summary(TrialRecord(t).plan) if t is not None else "not run",
                "confirm_label": baseline,
            }
        )
    return rows


def _metrics(t: FrozenTrial) -> dict[str, dict[str, float]]:
    """A complete trial's metrics (every complete trial recorded them)."""
    metrics = TrialRecord(t).metrics
    assert metrics is not None, f"trial {t.number} is complete but recorded no metrics"
    return metrics


def _grid_rows(
    recipe: Recipe, searched: list[FrozenTrial], paper_dm: Callable[[Any], float | None]
) -> list[dict[str, Any]]:
    """An ablation's rows: the searched trial at each point of the grid (``compare.grid_rows``)."""
    paper_rows: Mapping[str, Any] = recipe.paper.get("rows", {})
    rows = []
    for label, params in recipe.compare.get("grid_rows", {}).items():  # ablation rows: points of the grid
        t = next((t for t in searched if all(str(t.params.get(k)) == str(v) for k, v in params.items())), None)
        rows.append(
            {
                "label": label,
                "ours": _metrics(t) if t is not None else {},
                "paper": paper_rows.get(label, {}),
                "dm": TrialRecord(t).delta_m if t is not None else None,
                "paper_dm": paper_dm(paper_rows.get(label)),
                "plan": ", ".join(f"{k}={v}" for k, v in params.items()) + ("" if t is not None else " (not run)"),
                "confirm_label": f"trial {t.number}" if t is not None else "",
            }
        )
    return rows


def _search_row(searched: list[FrozenTrial]) -> dict[str, Any]:
    """The last row: the searched trial with the best Delta-m."""
    best = max(searched, key=lambda t: TrialRecord(t).delta_m or 0.0)  # each has one (``build_comparison``)
    return {
        "label": f"{SEARCH_ROW} (trial {best.number})",
        "ours": _metrics(best),
        "paper": {},
        "dm": TrialRecord(best).delta_m,
        "paper_dm": None,
        "plan": plan_summary(TrialRecord(best).plan),
        "confirm_label": f"trial {best.number}",
    }


def _add_confirmations(study: optuna.Study, rows: list[dict[str, Any]]) -> None:
    """Each row's confirmed Delta-m over seeds and whether it beats the best baseline, where the
    study confirmed the row's plan; drops the rows' ``confirm_label``."""
    conf = summarize(study)
    by_label = {p.label: p for p in conf.plans if p.interval is not None}
    for r in rows:
        p = by_label.get(r.pop("confirm_label", ""))
        if p is None:
            continue
        r["interval"] = p.interval
        r["confirmed"] = f"{p.interval} ({p.interval.n if p.interval else 0} seeds)"
        r["beats"] = "reference" if p.label == conf.best_baseline else "yes" if p.test and p.test.beats else "no"
