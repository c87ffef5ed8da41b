"""The ``fusionsearch`` command line: ``core`` (the Typer app, and how an exception becomes one
line and an exit code), ``options`` (every option, declared once, and the parsing of its text),
and the commands, each a thin layer over the Python API (parse, call one library function,
print): ``model_commands`` (inspect, build, train, list) and ``study_commands`` (run, compare,
worker, trials, best, report, dashboard).

Exported: the Typer app and the console script's ``main``. Importing the package registers every
command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusionsearch.registry import lazy_exports

if TYPE_CHECKING:
    from fusionsearch.cli.core import app, main
else:
    __getattr__, __dir__, __all__ = lazy_exports(__name__)

from fusionsearch.cli import data_commands, model_commands, study_commands  # they register the commands
