"""``fusionsearch inspect``: a backbone's cut points, and a saved stitched network's plan, fusion
points and the parameters fusion adds."""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

from rich.console import Console
from rich.table import Table

from fusionsearch.errors import FusionSearchWarning
from fusionsearch.nets.io import load
from fusionsearch.nets.net import StitchedNet
from fusionsearch.train.memory import MemoryPlan, fmt_bytes

__all__ = [
    "fusion_table",
    "print_net",
    "inspect_saved",
    "fmt_params",
    "points_table",
    "print_graph",
    "print_memory_plan",
]


def fusion_table(net: StitchedNet) -> Table:
    table = Table(title="Fusion points", title_justify="left")
    for col in ("point", "unit", "shape", "layout", "params"):
        table.add_column(col, justify="right" if col == "params" else "left")
    units = net.fusion_units()
    for p in net.points:
        unit = units.get(p.name)
        if unit is None:
            continue
        table.add_row(
            p.name,
            unit.unit_name,
            "x".join(map(str, p.shape)),
            p.layout,
            fmt_params(sum(q.numel() for q in unit.parameters())),
        )
    return table


def print_net(net: StitchedNet, console: Console) -> None:
    d = net.describe()
    params = d["params"]
    plan = d["plan"]
    console.print(
        f"[bold]stitched network[/]  backbones {', '.join(d['backbones'])}  tasks "
        + ", ".join(f"{t}:{n}" for t, n in d["tasks"].items()),
        highlight=False,
    )
    console.print(
        f"unit {plan['unit']} {plan['unit_args'] or ''}  shared prefix {plan['shared_prefix'] or 'none'}"
        f"  shortcut {'on' if plan['shortcut'] else 'off'}",
        highlight=False,
    )
    console.print(fusion_table(net))
    k = len(d["tasks"])
    added = params["fusion"]
    share = 100 * added / max(1, k * params["single_column"])
    console.print(
        f"parameters: total {fmt_params(params['total'])}, backbone {fmt_params(params['backbone'])}, heads"
        f" {fmt_params(params['heads'])}; fusion adds {fmt_params(added)} = {share:.2f}%"
        f" of {k} columns ({100 * added / max(1, params['single_column']):.2f}% of one column)",
        highlight=False,
    )


def inspect_saved(path: str, console: Console, as_json: bool = False, trust: bool = False) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FusionSearchWarning)
        net = load(path, trust=trust)
    if as_json:
        json.dump(net.describe(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print_net(net, console)


def fmt_params(n: int) -> str:
    """A parameter count as people say it: 1.23M, 45.6K."""
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def points_table(title: str, points: list[Any]) -> Table:
    """Cut points or boundaries as the table ``fusionsearch inspect`` prints."""
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
            fmt_params(p.params_before),
        )
    return table


def print_graph(g: Any, console: Console, all_cuts: bool = False) -> None:
    """A traced backbone as ``fusionsearch inspect`` shows it: its size, the stage boundaries,
    the first cut after each downsampling, every cut point with ``all_cuts``, and the notes the
    trace made (leaf modules, layouts it guessed)."""
    c, h, w = g.input_size
    console.print(
        f"[bold]{g.name}[/]  input {c}x{h}x{w}  {fmt_params(g.num_params)} parameters in forward_features, "
        f"{len(g.cut_points)} cut points, {len(g.boundaries)} stage boundaries",
        highlight=False,
    )
    console.print(points_table("Stage boundaries (last cut point of each stage)", g.boundaries))
    if g.stage_starts:
        console.print(points_table("First cut point after each downsampling (VGG pool1..pool5 style)", g.stage_starts))
    if all_cuts:
        console.print(points_table("Every cut point", g.cut_points))
    for note in g.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def print_memory_plan(plan: MemoryPlan, console: Console, what: str = "") -> None:
    """``inspect --memory``: a training step's predicted peak by what holds it (``train.memory``),
    then what the prediction approximates."""
    c, h, w = plan.input_size
    table = Table(title=f"Memory plan {what}: batch {plan.batch_size} x {c}x{h}x{w}", title_justify="left")
    table.add_column("what")
    table.add_column("memory", justify="right")
    for name, n in plan.rows():
        table.add_row(name, fmt_bytes(n))
    console.print(table)
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
