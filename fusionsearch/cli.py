"""The ``fusionsearch`` command line.

Each command is a thin layer over the Python API: parse, call, print. Errors that fusionsearch
raises on purpose are printed as one line (``error: ...``) with exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from functools import wraps
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import FusionSearchError

app = typer.Typer(
    name="fusionsearch",
    help="Architecture search for multi-task networks over timm backbones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="print the version and exit", is_eager=True),
) -> None:
    """Architecture search for multi-task networks over timm backbones."""
    if version:
        from . import __version__

        console.print(f"fusionsearch {__version__}")
        raise typer.Exit()


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (FusionSearchError, FileNotFoundError) as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def parse_size(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise typer.BadParameter(f"expected C,H,W such as 3,224,224, got {text!r}")
    return parts  # type: ignore[return-value]


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def _points_table(title: str, points: list[Any]) -> Table:
    table = Table(title=title, title_justify="left")
    for col, just in [("#", "right"), ("name", "left"), ("shape", "left"), ("layout", "left")]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    table.add_column("reduction", justify="right")
    table.add_column("channels", justify="right")
    table.add_column("params before", justify="right")
    for i, p in enumerate(points):
        table.add_row(
            str(i),
            p.name,
            "x".join(map(str, p.shape)),
            p.layout,
            "-" if p.reduction is None else f"/{p.reduction}",
            str(p.channels),
            _fmt_params(p.params_before),
        )
    return table


@app.command()
@friendly_errors
def inspect(
    backbone: str | None = typer.Option(None, "--backbone", "-b", help="timm model name"),
    model: str | None = typer.Option(None, "--model", "-m", help="a stitched network saved by `build`"),
    input_size: str | None = typer.Option(None, help="C,H,W of the example input (default: the model's)"),
    all_cuts: bool = typer.Option(False, "--all-cuts", help="list every cut point, not only boundaries"),
    as_json: bool = typer.Option(False, "--json", help="print JSON for scripts instead of tables"),
    leaf: list[str] = typer.Option([], "--leaf", help="module class name or path not to trace into"),
    pretrained: bool = typer.Option(False, help="load timm's pretrained weights (needs network)"),
    checkpoint: str | None = typer.Option(None, help="local weights to load into the backbone"),
) -> None:
    """Show a backbone's stage boundaries (where fusion can go), or a saved stitched network."""
    if (backbone is None) == (model is None):
        raise typer.BadParameter("give exactly one of --backbone NAME or --model PATH")
    if model is not None:
        from .inspect_model import inspect_saved

        inspect_saved(model, console=console, as_json=as_json)
        return
    from .graph import trace

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # notes are printed below
        g = trace(
            backbone,  # type: ignore[arg-type]
            parse_size(input_size),
            leaf=leaf,
            pretrained=pretrained,
            checkpoint=checkpoint,
        )
    if as_json:
        json.dump(g.to_dict(all_cuts=all_cuts), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    c, h, w = g.input_size
    console.print(
        f"[bold]{g.name}[/]  input {c}x{h}x{w}  {_fmt_params(g.num_params)} parameters in forward_features, "
        f"{len(g.cut_points)} cut points, {len(g.boundaries)} stage boundaries",
        highlight=False,
    )
    console.print(_points_table("Stage boundaries (last cut point of each stage)", g.boundaries))
    if g.stage_starts:
        console.print(_points_table("First cut point after each downsampling (VGG pool1..pool5 style)", g.stage_starts))
    if all_cuts:
        console.print(_points_table("Every cut point", g.cut_points))
    for note in g.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
