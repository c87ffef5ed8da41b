"""The ``fusionsearch`` command line: ``core`` (the Typer app, and how an exception becomes one
line and an exit code), ``options`` (every option, declared once, and the parsing of its text),
and the commands, each a thin layer over the Python API (parse, call one library function,
print): ``model_commands`` (inspect, build, train, list) and ``study_commands`` (run, compare,
worker, trials, best, report, dashboard).
"""

from __future__ import annotations

from fusionsearch.cli import data_commands, model_commands, study_commands  # noqa: F401 - they register the commands
from fusionsearch.cli.core import DEBUG, app, main, quiet_optuna

__all__ = ["app", "main", "quiet_optuna", "DEBUG"]
