"""What a person reads: the leaderboard and live view (``leaderboard``), the HTML report
(``html``, with the data-starved analysis of ``starved``), ``fusionsearch compare``'s tables
(``compare``), ``fusionsearch inspect`` (``inspect``), and the best network as a file
(``export``). Reads studies; the search does not depend on it (but for the live view).

The names load on first use (PEP 562), so that importing one module of this package, such as
``fusionsearch.report.inspect`` for ``fusionsearch inspect``, does not import all of them (Optuna,
SQLAlchemy, plotly) with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusionsearch.registry import lazy_exports

if TYPE_CHECKING:
    from fusionsearch.report.compare import (
        DEFAULT_ROWS,
        Comparison,
        build_comparison,
        compare_rows,
        comparison_settings,
        is_grid,
        paper_comparison,
    )
    from fusionsearch.report.data_check import folder_tables, print_folder_report
    from fusionsearch.report.export import ExportedBest, best_to_export, export_best
    from fusionsearch.report.figures import (
        confirmation_figure,
        fusion_weight_figure,
        importances,
        placement_map,
        task_weight_figure,
    )
    from fusionsearch.report.html import FIGURES, write_report
    from fusionsearch.report.inspect import (
        fmt_params,
        fusion_table,
        inspect_saved,
        points_table,
        print_graph,
        print_net,
    )
    from fusionsearch.report.leaderboard import (
        best_trial,
        confirmation_table,
        counts,
        headline_metrics,
        is_ranked,
        live_view,
        metrics_table,
        plan_summary,
        print_summary,
        trial_rows,
        trials_table,
    )
    from fusionsearch.report.starved import starved_report_figure, starved_rows, starved_tables
    from fusionsearch.report.supernet import has_supernet, supernet_figure

_HOMES: dict[str, str] = {
    "DEFAULT_ROWS": "fusionsearch.report.compare",
    "Comparison": "fusionsearch.report.compare",
    "build_comparison": "fusionsearch.report.compare",
    "compare_rows": "fusionsearch.report.compare",
    "is_grid": "fusionsearch.report.compare",
    "paper_comparison": "fusionsearch.report.compare",
    "comparison_settings": "fusionsearch.report.compare",
    "folder_tables": "fusionsearch.report.data_check",
    "print_folder_report": "fusionsearch.report.data_check",
    "ExportedBest": "fusionsearch.report.export",
    "best_to_export": "fusionsearch.report.export",
    "export_best": "fusionsearch.report.export",
    "has_supernet": "fusionsearch.report.supernet",
    "supernet_figure": "fusionsearch.report.supernet",
    "starved_report_figure": "fusionsearch.report.starved",
    "starved_rows": "fusionsearch.report.starved",
    "starved_tables": "fusionsearch.report.starved",
    "metrics_table": "fusionsearch.report.leaderboard",
    "print_summary": "fusionsearch.report.leaderboard",
    "FIGURES": "fusionsearch.report.html",
    "confirmation_figure": "fusionsearch.report.figures",
    "fusion_weight_figure": "fusionsearch.report.figures",
    "importances": "fusionsearch.report.figures",
    "placement_map": "fusionsearch.report.figures",
    "task_weight_figure": "fusionsearch.report.figures",
    "write_report": "fusionsearch.report.html",
    "fmt_params": "fusionsearch.report.inspect",
    "fusion_table": "fusionsearch.report.inspect",
    "inspect_saved": "fusionsearch.report.inspect",
    "points_table": "fusionsearch.report.inspect",
    "print_net": "fusionsearch.report.inspect",
    "print_graph": "fusionsearch.report.inspect",
    "best_trial": "fusionsearch.report.leaderboard",
    "confirmation_table": "fusionsearch.report.leaderboard",
    "counts": "fusionsearch.report.leaderboard",
    "headline_metrics": "fusionsearch.report.leaderboard",
    "is_ranked": "fusionsearch.report.leaderboard",
    "live_view": "fusionsearch.report.leaderboard",
    "plan_summary": "fusionsearch.report.leaderboard",
    "trial_rows": "fusionsearch.report.leaderboard",
    "trials_table": "fusionsearch.report.leaderboard",
}

__all__ = [
    "DEFAULT_ROWS",
    "Comparison",
    "build_comparison",
    "compare_rows",
    "is_grid",
    "paper_comparison",
    "comparison_settings",
    "folder_tables",
    "print_folder_report",
    "ExportedBest",
    "best_to_export",
    "export_best",
    "has_supernet",
    "supernet_figure",
    "starved_report_figure",
    "starved_rows",
    "starved_tables",
    "metrics_table",
    "print_summary",
    "FIGURES",
    "confirmation_figure",
    "fusion_weight_figure",
    "importances",
    "placement_map",
    "task_weight_figure",
    "write_report",
    "fmt_params",
    "fusion_table",
    "inspect_saved",
    "points_table",
    "print_net",
    "print_graph",
    "best_trial",
    "confirmation_table",
    "counts",
    "headline_metrics",
    "is_ranked",
    "live_view",
    "plan_summary",
    "trial_rows",
    "trials_table",
]

__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
