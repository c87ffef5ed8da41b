"""The commands about one network: ``inspect`` a backbone or a saved net, ``build`` one, ``train``
one plan, and ``list`` what is registered. Each parses, calls the library, and prints."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fusionsearch.cli.core import app, console, on_interrupt, say
from fusionsearch.cli.options import (
    DataOpt,
    DeterministicOpt,
    InputSizeOpt,
    JsonOpt,
    LabelledOpt,
    LeafOpt,
    PluginOpt,
    RecipeOpt,
    SizeOpt,
    TasksOpt,
    at_least,
    load_recipe_with,
    parse_at,
    parse_init,
    parse_leaf,
    parse_size,
    parse_weights,
    read_baseline,
    use_plugins,
)
from fusionsearch.errors import ArgumentError, FusionSearchError, FusionSearchWarning
from fusionsearch.paths import check_out

__all__ = ["inspect", "build", "train", "list_", "units", "LISTS"]

LISTS = ("units", "tasks", "datasets", "weightings", "kinds", "recipes")

_Str = str | None
MemoryOpt = Annotated[bool, typer.Option("--memory", help="predict a plan's peak training memory (no training)")]
SegmentsOpt = Annotated[
    bool, typer.Option("--checkpoint-segments", help="with --memory: as under train.checkpoint: segments")
]
ModelOpt = Annotated[_Str, typer.Option("--model", "-m", help="a stitched network saved by `build`")]
AllCutsOpt = Annotated[bool, typer.Option("--all-cuts", help="list every cut point, not only boundaries")]
PretrainedOpt = Annotated[bool, typer.Option(help="load timm's pretrained weights (needs network)")]
CheckpointOpt = Annotated[_Str, typer.Option(help="local weights to load into the backbone")]
TrustOpt = Annotated[
    bool, typer.Option("--trust", help="a --model file you made: let it ask timm for any model and arguments")
]
BuildBackboneOpt = Annotated[
    str, typer.Option("--backbone", "-b", help="timm model name (or NAME1,NAME2 one per task)")
]
BuildTasksOpt = Annotated[str, typer.Option(help="task:outputs, comma separated, e.g. seg:40,normal:3")]
BuildOutOpt = Annotated[str, typer.Option("--out", "-o", help="where to save the network (.pt)")]
UnitOpt = Annotated[str, typer.Option(help="fusion unit at every point (see `fusionsearch units`)")]
AtOpt = Annotated[_Str, typer.Option(help="comma separated cut points; default every stage boundary")]
InitOpt = Annotated[_Str, typer.Option(help="alpha,beta of the unit's init (default 0.9,0.1) or xavier")]
LrMultOpt = Annotated[
    float | None,
    typer.Option(help="fusion learning-rate multiplier (default: the papers' for the optimiser, x100 under SGD)"),
]
PrefixOpt = Annotated[_Str, typer.Option(help="one shared trunk up to this cut point")]
ShortcutOpt = Annotated[bool, typer.Option(help="NDDR-Shortcut head inputs")]
ColumnWeightsOpt = Annotated[list[str], typer.Option(help="per task, a single-task backbone checkpoint")]
PlanOpt = Annotated[
    str, typer.Option(help="fused (units at --at), single (K single-task nets), shared (one trunk), nddr_default")
]
TrainUnitOpt = Annotated[_Str, typer.Option(help="fusion unit (default: the recipe plan's)")]
TrainAtOpt = Annotated[_Str, typer.Option(help="comma separated cut points; default: the recipe plan's")]
StepsOpt = Annotated[int | None, typer.Option(help="training steps")]
BatchOpt = Annotated[int | None, typer.Option(help="batch size")]
TrainImagesOpt = Annotated[int | None, typer.Option(help="training images (synthetic: scenes; real: the first N)")]
ValImagesOpt = Annotated[int | None, typer.Option(help="validation images")]
LrOpt = Annotated[float | None, typer.Option(help="base learning rate")]
OptimizerOpt = Annotated[_Str, typer.Option(help="adamw or sgd (the papers' choice, momentum 0.9)")]
LossWeightOpt = Annotated[list[str], typer.Option(help="TASK=W, e.g. normal=20 (the official NDDR code's weight)")]
EvalEveryOpt = Annotated[int | None, typer.Option(help="evaluate every N steps")]
WeightingOpt = Annotated[
    _Str,
    typer.Option(
        help="task weighting: fixed, uncertainty, dwa, rlw, gls, famo, upgrad, ... (fusionsearch list weightings)"
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda[:N]")]
ResumeOpt = Annotated[_Str, typer.Option(help="save here and resume from here")]
TrainSeedOpt = Annotated[int, typer.Option(help="random seed")]
SaveMetricsOpt = Annotated[_Str, typer.Option(help="write the final metrics as JSON here")]
BaselineOpt = Annotated[
    _Str, typer.Option(help="single-task metrics JSON (from --plan single --save-metrics F): prints Delta-m")
]
TrainOutOpt = Annotated[_Str, typer.Option(help="save the trained network here (load with fusionsearch.load)")]


@app.command()
def inspect(
    backbone: Annotated[_Str, typer.Option("--backbone", "-b", help="timm model name")] = None,
    model: ModelOpt = None,
    input_size: InputSizeOpt = None,
    all_cuts: AllCutsOpt = False,
    as_json: JsonOpt = False,
    leaf: LeafOpt = None,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    trust: TrustOpt = False,
    plugin: PluginOpt = None,
    memory: MemoryOpt = False,
    tasks: TasksOpt = None,
    plan: PlanOpt = "fused",
    batch_size: BatchOpt = None,
    optimizer: OptimizerOpt = None,
    recipe: RecipeOpt = "quick",
    checkpoint_segments: SegmentsOpt = False,
) -> None:
    """Show a backbone's stage boundaries (where fusion can go), or a saved stitched network; with
    --memory, a plan's predicted peak training memory."""
    from fusionsearch.graph import trace
    from fusionsearch.report.inspect import inspect_saved, print_graph

    use_plugins(plugin)  # a saved net's unit or a timm model of the user's
    if (backbone is None) == (model is None):
        raise ArgumentError("give exactly one of --backbone NAME or --model PATH")
    if memory:
        segments = "segments" if checkpoint_segments else None
        _print_memory(recipe, backbone, tasks, plan, parse_size(input_size), batch_size, optimizer, segments)
        return
    if model is not None:
        inspect_saved(model, console=console, as_json=as_json, trust=trust)
        return
    assert backbone is not None  # exactly one of the two: checked above
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FusionSearchWarning)  # notes are printed below
        g = trace(
            backbone, parse_size(input_size), leaf=parse_leaf(leaf, []), pretrained=pretrained, checkpoint=checkpoint
        )
    if as_json:
        json.dump(g.to_dict(all_cuts=all_cuts), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print_graph(g, console, all_cuts=all_cuts)


def _print_memory(
    recipe: str,
    backbone: str | None,
    tasks: str | None,
    kind: str,
    size: Any,
    batch: int | None,
    opt: str | None,
    segments: str | None = None,
) -> None:
    """``inspect --memory``: the recipe's net for ``kind`` (its backbone and tasks replaced where
    given, built without its data), planned at ``size`` for the recipe's batch, optimiser and
    activation checkpointing (``segments``: ``--checkpoint-segments``, else the recipe's)."""
    from fusionsearch.experiment.experiment import Experiment
    from fusionsearch.report.inspect import print_memory_plan
    from fusionsearch.train.memory import plan_memory

    if backbone is None:
        raise ArgumentError("--memory plans a --backbone's net, not a saved --model")
    at_least("--batch-size", batch, 1)
    if size is not None and size[0] != 3:
        raise ArgumentError(f"--input-size with --memory: the images have 3 channels, got {size[0]}")
    r = load_recipe_with(recipe, backbone, tasks, None, None)
    if size is not None:
        r = r.with_overrides(data={**r.data, "size": [size[1], size[2]]})
    exp = Experiment(r)
    cfg = r.train_config(batch_size=batch, optimizer=opt, checkpoint=segments)
    net = exp.build(exp.plan_for(kind), read_data=False)
    plan = plan_memory(net, cfg.batch_size, exp.input_size, cfg.optimizer, cfg.momentum, cfg.checkpoint == "segments")
    print_memory_plan(plan, console, f"{backbone} x {len(r.tasks)} tasks, {kind}")


def _unit_args(init: str | None, lr_mult: float | None) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if init is not None:
        args["init"] = parse_init(init)
    if lr_mult is not None:
        if not math.isfinite(lr_mult) or lr_mult <= 0:
            raise ArgumentError(f"--lr-mult must be a number > 0, got {lr_mult:g}")
        args["lr_mult"] = lr_mult
    return args


@app.command()
def build(
    backbone: BuildBackboneOpt,
    tasks: BuildTasksOpt,
    out: BuildOutOpt,
    unit: UnitOpt = "nddr",
    at: AtOpt = None,
    init: InitOpt = None,
    lr_mult: LrMultOpt = None,
    shared_prefix: PrefixOpt = None,
    shortcut: ShortcutOpt = False,
    input_size: Annotated[_Str, typer.Option(help="C,H,W used for tracing (default: the model's)")] = None,
    column_weights: ColumnWeightsOpt = [],  # noqa: B006 - typer reads the default, never mutates it
    leaf: LeafOpt = None,
    plugin: PluginOpt = None,
) -> None:
    """Build a stitched multi-task network and save it (weights, plan and backbone names)."""
    from fusionsearch.graph import trace
    from fusionsearch.nets import StitchPlan, save
    from fusionsearch.nets import build as build_net
    from fusionsearch.nets.plan import parse_tasks
    from fusionsearch.report.inspect import print_net

    use_plugins(plugin)
    check_out(out, "--out")
    names, size, columns = backbone.split(","), parse_size(input_size), list(parse_tasks(tasks))
    leaves = parse_leaf(leaf, columns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FusionSearchWarning)
        first = leaves[columns[0]] if isinstance(leaves, dict) else leaves  # the default points are column 0's
        points = parse_at(at) or [b.name for b in trace(names[0], size, leaf=first).boundaries]
        plan = StitchPlan(
            at=points, unit=unit, unit_args=_unit_args(init, lr_mult), shared_prefix=shared_prefix, shortcut=shortcut
        )
        one = names if len(names) > 1 else names[0]
        net = build_net(one, tasks, plan, input_size=size, column_weights=column_weights or None, leaf=leaves)
    save(net, out)
    print_net(net, console)
    say(f"saved to {out}")


@app.command()
def train(
    recipe: RecipeOpt = "quick",
    backbone: Annotated[_Str, typer.Option("--backbone", "-b", help="timm model name")] = None,
    tasks: TasksOpt = None,
    data: DataOpt = None,
    plan: PlanOpt = "fused",
    unit: TrainUnitOpt = None,
    at: TrainAtOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    size: SizeOpt = None,
    train_images: TrainImagesOpt = None,
    val_images: ValImagesOpt = None,
    labelled: LabelledOpt = None,
    lr: LrOpt = None,
    optimizer: OptimizerOpt = None,
    loss_weight: LossWeightOpt = [],  # noqa: B006 - typer reads the default, never mutates it
    eval_every: EvalEveryOpt = None,
    weighting: WeightingOpt = None,
    device: DeviceOpt = "auto",
    deterministic: DeterministicOpt = False,
    checkpoint: ResumeOpt = None,
    seed: TrainSeedOpt = 0,
    save_metrics: SaveMetricsOpt = None,
    baseline: BaselineOpt = None,
    out: TrainOutOpt = None,
    plugin: PluginOpt = None,
) -> None:
    """Train one plan and print its metrics (and Delta-m against single-task baselines)."""
    from fusionsearch.data.partial import describe_labelled
    from fusionsearch.experiment.experiment import Experiment
    from fusionsearch.nets import save
    from fusionsearch.train.devices import check_device

    for flag, value in (("--steps", steps), ("--batch-size", batch_size), ("--eval-every", eval_every)):
        at_least(flag, value, 1)
    for flag, path in (("--out", out), ("--save-metrics", save_metrics), ("--checkpoint", checkpoint)):
        check_out(path, flag)
    check_device(device)
    on_interrupt(_train_interrupted(checkpoint))
    r = load_recipe_with(recipe, backbone, tasks, data, size, train_images, val_images, labelled, plugin)
    exp = Experiment(r, seed)
    for line in [*exp.data_notes(), *([describe_labelled(exp.datasets()[0])] if r.data.get("labelled") else [])]:
        say(line)
    stitch = exp.plan_for(plan, unit, parse_at(at))
    base = read_baseline(baseline, exp.directions())
    cfg = r.train_config(
        steps=steps, batch_size=batch_size, base_lr=lr, optimizer=optimizer, eval_every=eval_every, seed=seed,
        weighting=weighting, deterministic=deterministic or None,
    )  # fmt: skip
    weights = parse_weights(loss_weight) or None
    result = exp.train(stitch, cfg=cfg, loss_weights=weights, device=device, checkpoint=checkpoint)
    _print_result(exp, result, f"{r.backbone} {plan} {stitch.unit if plan == 'fused' else ''}", base)
    _write_json(save_metrics, result.metrics)
    if out:
        save(result.net, out, weighting=result.history.get("weighting"))
        say(f"saved to {out}")


def _train_interrupted(checkpoint: str | None) -> str:
    """What a Ctrl-C leaves of a ``train`` run: with ``--checkpoint``, the last step saved there
    (every evaluation); without, nothing."""
    if checkpoint:
        return f"interrupted: run the same command to resume from the last step saved in {checkpoint}"
    return "interrupted: nothing was saved; give --checkpoint FILE to make a run resumable"


def _print_result(exp: Any, result: Any, what: str, base: Any) -> None:
    """``train``'s output: the metrics table, each task's per-category results (per-class AP of
    ``det``, ...), and Delta-m against the single-task metrics when given."""
    from fusionsearch.report.leaderboard import metrics_table
    from fusionsearch.search.categories import per_category_lines

    console.print(metrics_table(f"{what} after {result.step} steps", result.metrics, exp.directions(), base))
    for line in per_category_lines(result, exp):
        say(line)
    if base:
        say(f"Delta-m vs single-task: {exp.delta_m(result.metrics, base):+.2f}%")


def _write_json(where: str | None, value: Any) -> None:
    """``--save-metrics``: nothing when it is not given."""
    if where:
        path = Path(where)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=2))


def _rows(what: str) -> list[tuple[str, ...]]:
    """The rows of ``fusionsearch list WHAT``: a registry's names, where each comes from (the
    package or a plugin) and first docstring lines, or the recipes found with what each reproduces
    (an invalid one says why, it does not stop the list)."""
    from fusionsearch.data import DATASETS
    from fusionsearch.experiment.recipe import list_recipes, load_recipe
    from fusionsearch.nets.fusion import FUSION_UNITS
    from fusionsearch.plugins import origin
    from fusionsearch.tasks import LABEL_KINDS, TASKS
    from fusionsearch.tasks.weighting import WEIGHTINGS

    rows: list[tuple[str, ...]] = []
    if what == "recipes":
        for name, path in list_recipes().items():
            try:
                rows.append((name, load_recipe(path).reproduces or str(path)))
            except FusionSearchError as e:
                rows.append((name, f"(invalid: {e})"))
        return rows
    registry: Any = {
        "units": FUSION_UNITS, "tasks": TASKS, "datasets": DATASETS, "weightings": WEIGHTINGS, "kinds": LABEL_KINDS
    }[what]  # fmt: skip
    for name, cls in sorted(registry.items()):
        first = (cls.__doc__ or "").strip().splitlines()
        label = (str(cls.label),) if what == "tasks" else ()
        rows.append((name, *label, origin(cls), first[0] if first else ""))
    return rows


@app.command("list")
def list_(
    what: str = typer.Argument("units", help="units, tasks, datasets, weightings, kinds or recipes"),
    plugin: PluginOpt = None,
) -> None:
    """List what is registered (with where each name comes from: fusionsearch or a plugin): fusion
    units, tasks, data sets, weightings, label kinds; or the recipes found."""
    if what not in LISTS:
        raise ArgumentError(f"fusionsearch list {what!r}: choose {', '.join(LISTS)}")
    use_plugins(plugin)
    table = Table(title=what.capitalize(), title_justify="left")
    for col in ("name", *(["label"] if what == "tasks" else []), *(["from"] if what != "recipes" else []), "what"):
        table.add_column(col, overflow="fold" if col == "from" else "ellipsis")  # a plugin's path in full
    for row in _rows(what):
        table.add_row(*row)
    Console(width=max(console.width, 140)).print(table)


@app.command()
def units() -> None:
    """List the registered fusion units (the same as `fusionsearch list units`)."""
    list_("units")
