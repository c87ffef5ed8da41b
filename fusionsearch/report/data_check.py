"""``fusionsearch data check``'s tables: per task what a folder labels, per split its images, then
the notes and every problem on a line of its own."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from fusionsearch.data.folder_check import FolderReport, TaskReport

__all__ = ["folder_tables", "print_folder_report"]


def _seen(rep: TaskReport, limit: int = 8) -> str:
    """Classes seen with their counts (pixels, images, objects, or positives of an attribute)."""
    if not rep.seen:
        return "-"
    items = sorted(rep.seen.items(), key=lambda kv: str(kv[0]))
    shown = ", ".join(f"{k}: {v:,}" for k, v in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def folder_tables(report: FolderReport) -> list[Table]:
    """The tasks table and the splits table."""
    tasks = Table(title=f"Tasks in {report.root} ({report.images} images)", title_justify="left")
    for col in ("task", "type", "kind", "from", "outputs", *report.splits, "seen", "ignored", "sizes ok"):
        tasks.add_column(col, justify="right" if col in ("outputs", "ignored", "sizes ok", *report.splits) else "left")
    for rep in report.tasks:
        outputs = f"{rep.outputs}{' (read)' if rep.read_from_labels else ''}"
        labelled = [f"{rep.labelled.get(s, 0)}/{n}" for s, n in report.splits.items()]
        if rep.objects:  # a box task: its objects too
            labelled = [f"{cell} ({rep.objects.get(s, 0):,} objects)" for cell, s in zip(labelled, report.splits)]
        ignored = f"{100 * rep.ignored:.1f}%" if rep.ignored is not None else "-"
        sizes = str(rep.shapes_ok) if rep.source != "labels.csv" and not rep.objects else "-"
        tasks.add_row(rep.name, rep.type, rep.kind, rep.source, outputs, *labelled, _seen(rep), ignored, sizes)
    splits = Table(title="Splits", title_justify="left")
    splits.add_column("split")
    splits.add_column("images", justify="right")
    for s, n in report.splits.items():
        splits.add_row(s, str(n))
    return [tasks, splits]


def print_folder_report(report: FolderReport, console: Console) -> None:
    """The tables, the notes, and the problems, one line each (what ``data check`` prints)."""
    for table in folder_tables(report):
        console.print(table)
    for line in report.notes:
        console.print(f"note: {line}", highlight=False, markup=False)
    for line in report.problems:
        console.print(f"problem: {line}", highlight=False, markup=False)
    if report.ok:
        console.print("no problems found", highlight=False)
