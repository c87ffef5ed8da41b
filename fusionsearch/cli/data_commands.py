"""The commands about data: ``data check PATH``, a user's folder read whole before any study."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from fusionsearch.cli.core import App, app, console, docs_line
from fusionsearch.cli.options import PluginOpt, use_plugins
from fusionsearch.errors import DataError

__all__ = ["data_app", "check"]

data_app = App(help="Check a data folder before a study.", epilog=docs_line("data"), no_args_is_help=True)
app.add_typer(data_app, name="data")

PathArg = Annotated[str, typer.Argument(help="the folder: PATH/images, PATH/<task>/, PATH/labels.csv, ...")]


@data_app.command()
def check(path: PathArg, plugin: PluginOpt = None) -> None:
    """Read a folder data set whole (every image and label, as training would) and print, per task,
    the labelled images, the classes seen and the ignored share, per split the images, and every
    problem on one line; exit 2 when there is any."""
    from rich.progress import track

    from fusionsearch.data.folder_check import check_folder
    from fusionsearch.report.data_check import print_folder_report

    use_plugins(plugin)  # a folder's tasks.yaml may name a task a plugin registers
    err = Console(stderr=True)
    report = check_folder(path, progress=lambda xs: track(xs, description="reading", console=err, transient=True))
    print_folder_report(report, Console(width=max(console.width, 140)))
    if not report.ok:
        raise DataError(f"{report.root} has {len(report.problems)} problem(s), listed above")
