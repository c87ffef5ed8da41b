"""The command line's frame: the Typer app, the consoles, and how exceptions become exit codes.

The commands (``model_commands``, ``study_commands``) register on ``app``. There is one error path,
``_Commands.invoke``: an error the user caused (every ``FusionSearchError``, and the operating
system's refusals: a missing file, a full disk, a permission) is printed as one unwrapped line
(``error: ...``) with exit code 2; Ctrl-C says how to resume and exits 130; anything else is a bug,
printed as one line with exit code 1, its traceback only with ``--debug`` or ``FUSIONSEARCH_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from fusionsearch.errors import ArgumentError, FusionSearchError

try:  # typer >= 0.2x vendors click as typer._click; older ones use click itself
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - the older typers
    from click.exceptions import UsageError  # type: ignore[assignment]

__all__ = [
    "App",
    "app",
    "main",
    "console",
    "err_console",
    "say",
    "note",
    "quiet_optuna",
    "runs_study",
    "DEBUG",
    "INTERRUPTED",
    "STOPPED",
    "on_interrupt",
    "DOCS_URL",
    "docs_line",
]

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error is one line, also in a log file
DEBUG = {"on": os.environ.get("FUSIONSEARCH_DEBUG", "") not in ("", "0")}


def _one_line(e: BaseException) -> str:
    """The error as one line, with every password this process was given hidden (a driver's
    error can quote part of one: ``search.credentials.mask``)."""
    text = " ".join(part.strip() for part in str(e).splitlines() if part.strip())
    credentials = sys.modules.get("fusionsearch.search.credentials")  # loaded by whatever opened a storage
    return (credentials.mask(text) if credentials is not None and text else text) or type(e).__name__


def _is_cli_control(e: BaseException) -> bool:
    """typer's and click's own exceptions (typer >= 0.2x vendors click as ``typer._click``)."""
    return type(e).__module__.split(".")[0] in ("typer", "click")


INTERRUPTED = "interrupted: the running trial is queued again; run the same command to resume"
STOPPED = "interrupted: the command stopped before it finished"  # one that runs no study
_ON_INTERRUPT = {"line": STOPPED}


def on_interrupt(line: str) -> None:
    """The one line that the running command prints when Ctrl-C stops it: ``STOPPED`` unless the
    command says what its interruption leaves behind (a study's ``INTERRUPTED``, ``train``'s
    checkpoint), so that ``trials`` or ``list`` never claims to have queued a trial."""
    _ON_INTERRUPT["line"] = line


def runs_study() -> None:
    """A command that runs a study's trials (``run``, ``compare``, ``worker``): Optuna's own lines
    quiet (``quiet_optuna``), and Ctrl-C's line says that the running trial is queued again."""
    quiet_optuna()
    on_interrupt(INTERRUPTED)


def _unraisable_at_exit(info: Any) -> None:
    """``sys.unraisablehook`` after the command, while the interpreter shuts down (a database
    connection's finaliser): no imports, no rich, only the file descriptor; Ctrl-C there still
    gives the command's one line and 130, never "Exception ignored" and exit 0."""
    if not isinstance(info.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(info)
        return
    os.write(2, (_ON_INTERRUPT["line"] + "\n").encode())
    os._exit(130)


def say(message: str) -> None:
    """One plain line on stdout: no markup, no highlighting (names may hold brackets)."""
    console.print(message, highlight=False, markup=False)


def note(message: str) -> None:
    """One plain line on stderr: what a person should know, apart from the results."""
    err_console.print(message, highlight=False, markup=False)


def quiet_optuna() -> None:
    """The commands that run or read studies print their own tables and live view instead of
    Optuna's line per trial. The command line's choice, made when such a command starts; a
    Python user of fusionsearch keeps Optuna's default."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _usage_error(e: UsageError, ctx: Any = None) -> NoReturn:
    """The option parser's errors (a value of the wrong type, an unknown option or command, an
    extra argument) as one line like every other error, naming ``--help``: click's own is a
    5-line box without ``error:``. A group named alone (``fusionsearch``) still prints its help."""
    if type(e).__name__ == "NoArgsIsHelpError":
        raise e
    where = (e.ctx or ctx).command_path if (e.ctx or ctx) is not None else "fusionsearch"
    message = " ".join(e.format_message().split())
    err_console.print(f"[bold red]error:[/] {escape(message)} (see {escape(where)} --help)", highlight=False)
    raise typer.Exit(2)


class _Commands(TyperGroup):
    """The one place where exceptions become exit codes (see the module docstring)."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:  # the root's own options; a command's are parsed in ``invoke``
            return super().make_context(info_name, args, parent, **extra)
        except UsageError as e:
            _usage_error(e)

    def invoke(self, ctx: Any) -> Any:
        from fusionsearch.interrupts import interrupts_taken

        _ON_INTERRUPT["line"] = STOPPED
        try:
            with interrupts_taken():  # Ctrl-C wherever it lands, a finaliser included (``interrupts``)
                return super().invoke(ctx)
        except KeyboardInterrupt:
            err_console.print(_ON_INTERRUPT["line"], highlight=False, markup=False)
            raise typer.Exit(130) from None
        except (FusionSearchError, OSError) as e:
            if DEBUG["on"]:
                traceback.print_exc()
            err_console.print(f"[bold red]error:[/] {escape(_one_line(e))}", highlight=False)
            raise typer.Exit(2) from None
        except UsageError as e:
            _usage_error(e, ctx)
        except Exception as e:
            if _is_cli_control(e):  # --help, --version: typer prints those itself
                raise
            from fusionsearch.search.recovery import interrupted

            if interrupted(e):  # Ctrl-C that landed inside a database commit
                err_console.print(_ON_INTERRUPT["line"], highlight=False, markup=False)
                raise typer.Exit(130) from None
            if DEBUG["on"]:
                traceback.print_exc()
            hint = "" if DEBUG["on"] else " (--debug or FUSIONSEARCH_DEBUG=1 shows the traceback)"
            err_console.print(
                f"[bold red]internal error:[/] {escape(type(e).__name__)}: {escape(_one_line(e))}{hint}",
                highlight=False,
            )
            raise typer.Exit(1) from None


class _Command(TyperCommand):
    """Every command: an option given as empty text (``--mode ''``, or only spaces) is refused like
    any other bad value, before the command runs. Each option's default is None or a word, so an
    empty value can only mean a slip (an unset shell variable), which would otherwise fall back to
    the default silently or, for a path, mean the working folder."""

    def invoke(self, ctx: Any) -> Any:
        given = ("COMMANDLINE", "ENVIRONMENT")
        for p in self.params:
            if p.param_type_name != "option" or p.name is None or ctx.get_parameter_source(p.name).name not in given:
                continue
            value = ctx.params.get(p.name)
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, str) and not v.strip() for v in values):
                flag = max(p.opts, key=len)
                raise ArgumentError(f"{flag} is empty: give it a value, or leave it out for the default")
        return super().invoke(ctx)


DOCS_URL = "https://fusionsearch.readthedocs.io/en/latest/"  # the site built from docs/ (mkdocs.yml's site_url)
# each command's page on that site (docs/PAGE.md); a command not named here points to the home page
DOCS_PAGES = {
    **dict.fromkeys(["inspect", "build", "train"], "concepts"),  # cut points; plans and baselines
    **dict.fromkeys(["list", "units"], "extending"),
    **dict.fromkeys(["run", "worker", "trials", "best", "dashboard"], "search"),
    "report": "reading-a-report",
    "compare": "recipes",
    **dict.fromkeys(["data", "check"], "your-own-data"),
}


def docs_line(command: str | None = None) -> str:
    """The last line of a command's ``--help``: the address of its page (the home page for none)."""
    page = DOCS_PAGES.get(command or "", "")
    return f"Docs: {DOCS_URL}{page + '/' if page else ''}"


class App(typer.Typer):
    """A Typer app whose commands refuse empty option values (``_Command``) and whose ``--help``
    ends with the command's page of the docs (``docs_line``); the data commands' too."""

    def command(self, name: str | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Command)

        def register(f: Any) -> Any:
            kwargs.setdefault("epilog", docs_line(name or f.__name__.strip("_").replace("_", "-")))
            return typer.Typer.command(self, name, **kwargs)(f)

        return register


app = App(
    cls=_Commands,
    name="fusionsearch",
    help="Architecture search for multi-task networks over timm backbones.",
    epilog=docs_line(),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from fusionsearch import __version__

        console.print(f"fusionsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="print the version and exit", is_eager=True, callback=_print_version
    ),
    debug: bool = typer.Option(False, "--debug", help="print the traceback of an unexpected error"),
) -> None:
    """Architecture search for multi-task networks over timm backbones."""
    from fusionsearch.plugins import load_entry_points

    if debug:
        DEBUG["on"] = True
    load_entry_points()  # installed packages' plugins, in every command and worker (a broken one: one line)


def _interrupted_at_exit(signum: int, frame: Any) -> None:
    """SIGINT while the interpreter shuts down, after the command: the same line and 130 as
    during it, instead of dying by the signal with no word (Python has put its default back)."""
    with contextlib.suppress(Exception):  # what the command printed stays printed (a closed pipe: nothing to keep)
        sys.stdout.flush()
    os.write(2, (_ON_INTERRUPT["line"] + "\n").encode())
    os._exit(130)


def main() -> None:
    try:
        app()
    finally:  # the interpreter's shutdown still runs finalisers (database connections)
        sys.unraisablehook = _unraisable_at_exit
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, _interrupted_at_exit)
