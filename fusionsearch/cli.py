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
        except (FusionSearchError, FileNotFoundError, ValueError) as e:
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


@app.command()
@friendly_errors
def build(
    backbone: str = typer.Option(..., "--backbone", "-b", help="timm model name (or NAME1,NAME2 one per task)"),
    tasks: str = typer.Option(..., help="task:outputs, comma separated, e.g. seg:40,normal:3"),
    out: str = typer.Option(..., "--out", "-o", help="where to save the network (.pt)"),
    unit: str = typer.Option("nddr", help="fusion unit at every point (see `fusionsearch units`)"),
    at: str | None = typer.Option(None, help="comma separated cut points; default every stage boundary"),
    init: str | None = typer.Option(None, help="alpha,beta of the unit's init (default 0.9,0.1) or xavier"),
    lr_mult: float | None = typer.Option(None, help="fusion learning-rate multiplier (default 100)"),
    shared_prefix: str | None = typer.Option(None, help="one shared trunk up to this cut point"),
    shortcut: bool = typer.Option(False, help="NDDR-Shortcut head inputs"),
    input_size: str | None = typer.Option(None, help="C,H,W used for tracing (default: the model's)"),
    column_weights: list[str] = typer.Option([], help="per task, a single-task backbone checkpoint"),
    leaf: list[str] = typer.Option([], "--leaf", help="module class name or path not to trace into"),
) -> None:
    """Build a stitched multi-task network and save it (weights, plan and backbone names)."""
    from .graph import trace
    from .inspect_model import print_net
    from .stitch import StitchPlan, save
    from .stitch import build as build_net

    names = backbone.split(",")
    size = parse_size(input_size)
    if at is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            points = [b.name for b in trace(names[0], size, leaf=leaf).boundaries]
    else:
        points = [p.strip() for p in at.split(",") if p.strip()]
    args: dict[str, Any] = {}
    if init is not None:
        args["init"] = "xavier" if init == "xavier" else tuple(float(v) for v in init.split(","))
    if lr_mult is not None:
        args["lr_mult"] = lr_mult
    plan = StitchPlan(at=points, unit=unit, unit_args=args, shared_prefix=shared_prefix, shortcut=shortcut)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_net(
            names if len(names) > 1 else names[0],
            tasks,
            plan,
            input_size=size,
            column_weights=column_weights or None,
            leaf=leaf,
        )
    save(net, out)
    print_net(net, console)
    console.print(f"saved to {out}", highlight=False)


@app.command()
@friendly_errors
def train(
    backbone: str = typer.Option("resnet18", "--backbone", "-b", help="timm model name"),
    tasks: str = typer.Option("seg,normal", help="comma separated task names (see `fusionsearch units`)"),
    data: str = typer.Option("synthetic", help="data set (built-in: synthetic)"),
    plan: str = typer.Option("fused", help="fused (units at --at), single (K single-task nets), shared (one trunk)"),
    unit: str = typer.Option("nddr", help="fusion unit"),
    at: str | None = typer.Option(None, help="comma separated cut points; default every stage boundary"),
    steps: int = typer.Option(300, help="training steps"),
    batch_size: int = typer.Option(8, help="batch size"),
    size: int = typer.Option(128, help="image size of the synthetic data"),
    train_images: int = typer.Option(512, help="synthetic training scenes"),
    val_images: int = typer.Option(64, help="synthetic validation scenes"),
    lr: float = typer.Option(2e-3, help="base learning rate"),
    optimizer: str = typer.Option("adamw", help="adamw or sgd (the papers' choice, momentum 0.9)"),
    loss_weight: list[str] = typer.Option([], help="TASK=W, e.g. normal=20 (the official NDDR code's weight)"),
    eval_every: int = typer.Option(100, help="evaluate every N steps"),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]"),
    checkpoint: str | None = typer.Option(None, help="save here and resume from here"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Train one plan on the built-in data and print its metrics."""
    from .data import SyntheticScenes
    from .graph import trace
    from .stitch import StitchPlan
    from .stitch import build as build_net
    from .tasks import get_task
    from .train import TrainConfig, fit

    if data != "synthetic":
        raise typer.BadParameter("only the built-in 'synthetic' data set is available so far")
    weights = {}
    for item in loss_weight:
        name, _, w = item.partition("=")
        weights[name] = float(w)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    outs = {"seg": SyntheticScenes.num_classes, "normal": 3, "depth": 1}
    for t in names:
        if t not in outs:
            raise typer.BadParameter(f"the synthetic data has seg, normal and depth labels, not {t!r}")
    task_objs = {t: get_task(t, out_channels=outs[t], loss_weight=weights.get(t, 1.0)) for t in names}
    size3 = (3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bounds = [b.name for b in trace(backbone, size3).boundaries]
        points = bounds if at is None else [p.strip() for p in at.split(",") if p.strip()]
        stitch = {
            "fused": StitchPlan(at=points, unit=unit),
            "single": StitchPlan(at=[]),
            "shared": StitchPlan(shared_prefix=bounds[-1]),
        }.get(plan)
        if stitch is None:
            raise typer.BadParameter(f"--plan must be fused, single or shared, got {plan!r}")
        net = build_net(backbone, {t: outs[t] for t in names}, stitch, input_size=size3)
    torch_seed(seed)
    cfg = TrainConfig(
        steps=steps, batch_size=batch_size, base_lr=lr, optimizer=optimizer, eval_every=eval_every, seed=seed
    )
    history = fit(
        net,
        task_objs,
        SyntheticScenes("train", train_images, size, seed),
        SyntheticScenes("val", val_images, size, seed),
        cfg,
        device=device,
        checkpoint=checkpoint,
    )
    table = Table(title=f"{backbone} {plan} {unit if plan == 'fused' else ''} after {history['step']} steps")
    for col in ("task", "metric", "value", "better"):
        table.add_column(col)
    for t, metrics in history["evals"][-1]["metrics"].items():
        for m, v in metrics.items():
            table.add_row(t, m, f"{v:.2f}", "higher" if task_objs[t].metrics[m] else "lower")
    console.print(table)


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


@app.command()
def units() -> None:
    """List the registered fusion units."""
    from .fusion import FUSION_UNITS

    table = Table(title="Fusion units", title_justify="left")
    table.add_column("name")
    table.add_column("what")
    for name, cls in sorted(FUSION_UNITS.items()):
        table.add_row(name, (cls.__doc__ or "").strip().splitlines()[0])
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
