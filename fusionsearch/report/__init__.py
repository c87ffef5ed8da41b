"""What a person reads: the leaderboard and live view (``leaderboard``), the HTML report
(``html``, with the data-starved analysis of ``starved``), ``fusionsearch compare``'s tables
(``compare``), ``fusionsearch inspect`` (``inspect``), and the best network as a file
(``export``). Reads studies; the search does not depend on it (but for the live view).

Exported: what ``run``, ``trials``, ``best``, ``report`` and ``compare`` print or write, for a
Python user; the rest is imported from its module. The names load on first use
(``registry.lazy_exports``), so that importing one module does not import plotly with the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusionsearch.registry import lazy_exports

if TYPE_CHECKING:
    from fusionsearch.report.compare import Comparison, build_comparison, comparison_settings, paper_comparison
    from fusionsearch.report.export import ExportedBest, export_best
    from fusionsearch.report.html import write_report
    from fusionsearch.report.leaderboard import best_trial, print_summary, trials_table
else:
    __getattr__, __dir__, __all__ = lazy_exports(__name__)
