"""The ``fusionsearch`` command line.

Each command is a thin layer over the Python API: parse, call, print. There is one error path,
``_Commands.invoke``: an error the user caused (every ``FusionSearchError``, and the operating
system's refusals: a missing file, a full disk, a permission) is printed as one unwrapped line
(``error: ...``) with exit code 2; Ctrl-C says how to resume and exits 130; anything else is a bug,
printed as one line with exit code 1, its traceback only with ``--debug`` or ``FUSIONSEARCH_DEBUG=1``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
import warnings
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from fusionsearch.errors import ArgumentError, FusionSearchError, FusionSearchWarning

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error is one line, also in a log file
_debug = {"on": os.environ.get("FUSIONSEARCH_DEBUG", "") not in ("", "0")}


def _one_line(e: BaseException) -> str:
    text = " ".join(part.strip() for part in str(e).splitlines() if part.strip())
    return text or type(e).__name__


def _is_cli_control(e: BaseException) -> bool:
    """typer's and click's own exceptions (typer >= 0.2x vendors click as ``typer._click``)."""
    return type(e).__module__.split(".")[0] in ("typer", "click")


INTERRUPTED = "interrupted: the running trial is queued again; run the same command to resume"


class _Unraisable:
    """``sys.unraisablehook`` while a command runs. Ctrl-C that lands in a finaliser or a database
    callback cannot propagate: Python would print "Exception ignored in ..." with a traceback, and
    the command would exit 0 as if it had completed. Here it is noted, and the command exits 130
    with the one line; after the command (interpreter shutdown, ``at_exit``) it exits at once."""

    def __init__(self, at_exit: bool = False) -> None:
        self.caught = 0
        self.at_exit = at_exit

    def __call__(self, info: Any) -> None:
        if not isinstance(info.exc_value, KeyboardInterrupt):
            sys.__unraisablehook__(info)
        elif self.at_exit:  # the interpreter is shutting down: no imports, no rich, only the file descriptor
            os.write(2, (INTERRUPTED + "\n").encode())
            os._exit(130)
        else:
            self.caught += 1


def quiet_optuna() -> None:
    """The commands that run or read studies print their own tables and live view instead of
    Optuna's line per trial. The command line's choice, made when such a command starts; a
    Python user of fusionsearch keeps Optuna's default."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


class _Commands(TyperGroup):
    """The one place where exceptions become exit codes (see the module docstring)."""

    def invoke(self, ctx: Any) -> Any:
        default_hook, hook = sys.unraisablehook, _Unraisable()
        sys.unraisablehook = hook
        try:
            out = super().invoke(ctx)
            if hook.caught:
                raise KeyboardInterrupt
            return out
        except KeyboardInterrupt:
            err_console.print(INTERRUPTED, highlight=False)
            raise typer.Exit(130) from None
        except (FusionSearchError, OSError) as e:
            if _debug["on"]:
                traceback.print_exc()
            err_console.print(f"[bold red]error:[/] {escape(_one_line(e))}", highlight=False)
            raise typer.Exit(2) from None
        except Exception as e:
            if _is_cli_control(e):  # --help, --version, a usage error: typer prints those itself
                raise
            from fusionsearch.search.recovery import interrupted

            if interrupted(e):  # Ctrl-C that landed inside a database commit
                err_console.print(INTERRUPTED, highlight=False)
                raise typer.Exit(130) from None
            if _debug["on"]:
                traceback.print_exc()
            hint = "" if _debug["on"] else " (--debug or FUSIONSEARCH_DEBUG=1 shows the traceback)"
            err_console.print(
                f"[bold red]internal error:[/] {escape(type(e).__name__)}: {escape(_one_line(e))}{hint}",
                highlight=False,
            )
            raise typer.Exit(1) from None
        finally:
            sys.unraisablehook = default_hook


app = typer.Typer(
    cls=_Commands,
    name="fusionsearch",
    help="Architecture search for multi-task networks over timm backbones.",
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
    if debug:
        _debug["on"] = True


def parse_size(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise ArgumentError(f"--input-size: expected C,H,W such as 3,224,224, got {text!r}")
    if min(parts) < 1:
        raise ArgumentError(f"--input-size: every dimension must be >= 1, got {text!r}")
    return parts


@app.command()
def inspect(
    backbone: str | None = typer.Option(None, "--backbone", "-b", help="timm model name"),
    model: str | None = typer.Option(None, "--model", "-m", help="a stitched network saved by `build`"),
    input_size: str | None = typer.Option(None, help="C,H,W of the example input (default: the model's)"),
    all_cuts: bool = typer.Option(False, "--all-cuts", help="list every cut point, not only boundaries"),
    as_json: bool = typer.Option(False, "--json", help="print JSON for scripts instead of tables"),
    leaf: LeafOpt = None,
    pretrained: bool = typer.Option(False, help="load timm's pretrained weights (needs network)"),
    checkpoint: str | None = typer.Option(None, help="local weights to load into the backbone"),
    trust: bool = typer.Option(
        False, "--trust", help="a --model file you made: let it ask timm for any model and arguments"
    ),
) -> None:
    """Show a backbone's stage boundaries (where fusion can go), or a saved stitched network."""
    if (backbone is None) == (model is None):
        raise ArgumentError("give exactly one of --backbone NAME or --model PATH")
    if model is not None:
        from fusionsearch.report.inspect import inspect_saved

        inspect_saved(model, console=console, as_json=as_json, trust=trust)
        return
    from fusionsearch.graph.cuts import trace
    from fusionsearch.report.inspect import fmt_params, points_table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FusionSearchWarning)  # notes are printed below
        g = trace(
            backbone,  # type: ignore[arg-type]
            parse_size(input_size),
            leaf=leaf or [],
            pretrained=pretrained,
            checkpoint=checkpoint,
        )
    if as_json:
        json.dump(g.to_dict(all_cuts=all_cuts), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
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


@app.command()
def build(
    backbone: str = typer.Option(..., "--backbone", "-b", help="timm model name (or NAME1,NAME2 one per task)"),
    tasks: str = typer.Option(..., help="task:outputs, comma separated, e.g. seg:40,normal:3"),
    out: str = typer.Option(..., "--out", "-o", help="where to save the network (.pt)"),
    unit: str = typer.Option("nddr", help="fusion unit at every point (see `fusionsearch units`)"),
    at: str | None = typer.Option(None, help="comma separated cut points; default every stage boundary"),
    init: str | None = typer.Option(None, help="alpha,beta of the unit's init (default 0.9,0.1) or xavier"),
    lr_mult: float | None = typer.Option(
        None, help="fusion learning-rate multiplier (default: the papers' for the optimiser, x100 under SGD)"
    ),
    shared_prefix: str | None = typer.Option(None, help="one shared trunk up to this cut point"),
    shortcut: bool = typer.Option(False, help="NDDR-Shortcut head inputs"),
    input_size: str | None = typer.Option(None, help="C,H,W used for tracing (default: the model's)"),
    column_weights: list[str] = typer.Option([], help="per task, a single-task backbone checkpoint"),
    leaf: LeafOpt = None,
) -> None:
    """Build a stitched multi-task network and save it (weights, plan and backbone names)."""
    from fusionsearch.graph.cuts import trace
    from fusionsearch.nets.builder import build as build_net
    from fusionsearch.nets.io import save
    from fusionsearch.nets.plan import StitchPlan
    from fusionsearch.report.inspect import print_net

    check_out(out, "--out")
    names = backbone.split(",")
    size = parse_size(input_size)
    if at is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FusionSearchWarning)
            points = [b.name for b in trace(names[0], size, leaf=leaf or []).boundaries]
    else:
        points = [p.strip() for p in at.split(",") if p.strip()]
    args: dict[str, Any] = {}
    if init is not None:
        args["init"] = parse_init(init)
    if lr_mult is not None:
        if not math.isfinite(lr_mult) or lr_mult <= 0:
            raise ArgumentError(f"--lr-mult must be a number > 0, got {lr_mult:g}")
        args["lr_mult"] = lr_mult
    plan = StitchPlan(at=points, unit=unit, unit_args=args, shared_prefix=shared_prefix, shortcut=shortcut)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FusionSearchWarning)
        net = build_net(
            names if len(names) > 1 else names[0],
            tasks,
            plan,
            input_size=size,
            column_weights=column_weights or None,
            leaf=leaf or [],
        )
    save(net, out)
    print_net(net, console)
    console.print(f"saved to {out}", highlight=False)


def check_out(path: str | None, flag: str, folder: bool = False) -> None:
    """An output path that can be written, checked before any work: a folder where a file goes
    (or a file where a folder goes), a device or pipe (``os.replace`` would put a regular file in
    place of ``/dev/null``), a name the file system cannot hold, or a folder that cannot be
    created or written would otherwise fail only after the training, losing it."""
    import stat
    from pathlib import Path

    if path is None:
        return
    p = Path(path)
    if path == "" or any(len(part.encode()) > 255 for part in p.parts):
        raise ArgumentError(f"{flag} {path[:80]!r}: a file name must be 1 to 255 bytes long")
    if p.exists():
        mode = p.stat().st_mode
        if folder and not stat.S_ISDIR(mode):
            raise ArgumentError(f"{flag} {path!r} is a file: give a folder")
        if not folder and stat.S_ISDIR(mode):
            raise ArgumentError(f"{flag} {path!r} is a folder: give a file name such as {p / 'out.pt'}")
        if not folder and not stat.S_ISREG(mode):
            raise ArgumentError(f"{flag} {path!r} exists and is not a regular file (a device or a pipe)")
    parent = next((q for q in [p.parent if not folder else p, *p.parents] if q.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ArgumentError(f"{flag} {path!r}: {str(parent)!r} is not a folder this user can write to")


def parse_init(text: str) -> Any:
    """``--init ALPHA,BETA`` (two finite numbers) or ``xavier``."""
    if text == "xavier":
        return text
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        raise ArgumentError(f"--init takes ALPHA,BETA (two finite numbers such as 0.9,0.1) or xavier, got {text!r}")
    return values


MAX_WORKERS = 256

RECIPE_HELP = "recipe name (recipes/NAME.yaml) or YAML file; other options override it"
DATA_HELP = (
    "a registered data set, NAME or NAME:ROOT, e.g. synthetic or nyuv2:/data/nyud"
    " (`fusionsearch list datasets`; default: the recipe's)"
)


# options that several commands share, declared once
STORAGE_HELP = (
    "Optuna storage URL (default: an SQLite file here; postgresql://... for many machines);"
    " FUSIONSEARCH_STORAGE keeps a password off the command line"
)
RecipeOpt = Annotated[str, typer.Option(help=RECIPE_HELP)]
DataOpt = Annotated[str | None, typer.Option(help=DATA_HELP)]
SizeOpt = Annotated[int | None, typer.Option(help="image size")]
LeafOpt = Annotated[list[str] | None, typer.Option("--leaf", help="module class name or path not to trace into")]
StudyOpt = Annotated[str, typer.Option(help="study name")]
ArtifactsOpt = Annotated[str | None, typer.Option(help="artifact folder (default: beside the SQLite file)")]
StorageOpt = Annotated[str | None, typer.Option(envvar="FUSIONSEARCH_STORAGE", help=STORAGE_HELP)]
WorkersOpt = Annotated[int, typer.Option(help="worker processes, each on one device")]
DevicesOpt = Annotated[str, typer.Option(help="auto (every visible GPU, else CPU), cpu, or cuda:0,cuda:1")]
DeterministicOpt = Annotated[
    bool,
    typer.Option(
        "--deterministic",
        help="torch's deterministic algorithms (on a GPU: the same numbers on every rerun, slower; see README On GPUs)",
    ),
]
LabelledOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--labelled",
        help="TASK=SHARE or TASK=ID_FILE: keep TASK's label on that share of the training images (seg=0.1)"
        " or on the ids the file lists; the others lose it (validation stays fully labelled); repeatable",
    ),
]


def load_recipe_with(
    recipe: str,
    backbone: str | None,
    tasks: str | None,
    data: str | None,
    size: int | None,
    train_images: int | None = None,
    val_images: int | None = None,
    labelled: list[str] | None = None,
) -> Any:
    from fusionsearch.search.recipe import load_recipe, parse_data

    for flag, value in (("--size", size), ("--train-images", train_images), ("--val-images", val_images)):
        at_least(flag, value, 1)
    names = task_list(tasks)
    r = load_recipe(recipe)
    data_spec = parse_data(data, r.data)
    for key, value in (("size", size), ("train_length", train_images), ("val_length", val_images)):
        if value is not None:
            data_spec[key] = value
    if labelled:
        data_spec["labelled"] = {**(data_spec.get("labelled") or {}), **parse_labelled(labelled)}
    return r.with_overrides(backbone=backbone, tasks=names, data=data_spec)


def parse_labelled(items: list[str]) -> dict[str, float | str]:
    """``--labelled TASK=SHARE`` (a number in (0, 1]) or ``TASK=FILE`` (a file of item ids)."""
    out: dict[str, float | str] = {}
    for item in items:
        for part in item.split(","):
            name, sep, value = part.partition("=")
            if not sep or not name.strip() or not value.strip():
                raise ArgumentError(f"--labelled takes TASK=SHARE or TASK=ID_FILE, e.g. seg=0.1; got {part!r}")
            try:
                out[name.strip()] = float(value)
            except ValueError:
                out[name.strip()] = value.strip()
    return out


def check_seed(seed: int | None) -> None:
    """``--seed``: the samplers' seed is seed x 1000 + the worker's number, below 2^32."""
    from fusionsearch.search.recipe import MAX_SEED

    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ArgumentError(f"--seed must be in 0..{MAX_SEED:,}, got {seed}")


def at_least(flag: str, value: float | None, low: float) -> None:
    """An option's lower bound, checked before anything is built or stored."""
    if value is not None and value < low:
        raise ArgumentError(f"{flag} must be >= {low:g}, got {value:g}")


def task_list(tasks: str | None) -> list[str] | None:
    """``--tasks``: None keeps the recipe's; an empty or repeating list is an error, not a default."""
    if tasks is None:
        return None
    names = [t.strip() for t in tasks.split(",")]
    if not any(names):
        raise ArgumentError("--tasks is empty: give task names such as seg,normal (or leave it out for the recipe's)")
    if "" in names:
        raise ArgumentError(f"--tasks {tasks!r} has an empty name: separate names with single commas")
    twice = sorted({t for t in names if names.count(t) > 1})
    if twice:
        raise ArgumentError(f"--tasks names {', '.join(twice)} more than once: each task is one column")
    return names


def fusion_tasks(r: Any) -> None:
    """Before a study exists: a fusion search or comparison needs two tasks to fuse (one task has
    nothing to search), and the data set must be there and label every task."""
    from fusionsearch.search.experiment import Experiment

    if len(r.tasks) < 2:
        raise ArgumentError(
            f"fusion needs at least 2 tasks, the study has {len(r.tasks)} ({', '.join(r.tasks)}):"
            " add one with --tasks, or train a single-task net with `fusionsearch train --plan single`"
        )
    Experiment(r).task_sizes()


def parse_weights(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, w = item.partition("=")
        try:
            out[name.strip()] = float(w)
        except ValueError:
            sep = ""
        if not sep:
            raise ArgumentError(f"--loss-weight takes TASK=WEIGHT, e.g. normal=20; got {item!r}")
    return out


@app.command()
def train(
    recipe: RecipeOpt = "quick",
    backbone: str | None = typer.Option(None, "--backbone", "-b", help="timm model name"),
    tasks: str | None = typer.Option(None, help="comma separated task names, e.g. seg,normal"),
    data: DataOpt = None,
    plan: str = typer.Option(
        "fused", help="fused (units at --at), single (K single-task nets), shared (one trunk), nddr_default"
    ),
    unit: str | None = typer.Option(None, help="fusion unit (default: the recipe plan's)"),
    at: str | None = typer.Option(None, help="comma separated cut points; default: the recipe plan's"),
    steps: int | None = typer.Option(None, help="training steps"),
    batch_size: int | None = typer.Option(None, help="batch size"),
    size: SizeOpt = None,
    train_images: int | None = typer.Option(None, help="training images (synthetic: scenes; real: the first N)"),
    val_images: int | None = typer.Option(None, help="validation images"),
    labelled: LabelledOpt = None,
    lr: float | None = typer.Option(None, help="base learning rate"),
    optimizer: str | None = typer.Option(None, help="adamw or sgd (the papers' choice, momentum 0.9)"),
    loss_weight: list[str] = typer.Option([], help="TASK=W, e.g. normal=20 (the official NDDR code's weight)"),
    eval_every: int | None = typer.Option(None, help="evaluate every N steps"),
    weighting: str | None = typer.Option(
        None,
        help="task weighting: fixed, uncertainty, dwa, rlw, gls, famo, upgrad, ... (fusionsearch list weightings)",
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]"),
    deterministic: DeterministicOpt = False,
    checkpoint: str | None = typer.Option(None, help="save here and resume from here"),
    seed: int = typer.Option(0, help="random seed"),
    save_metrics: str | None = typer.Option(None, help="write the final metrics as JSON here"),
    baseline: str | None = typer.Option(
        None, help="single-task metrics JSON (from --plan single --save-metrics F): prints Delta-m"
    ),
    out: str | None = typer.Option(None, help="save the trained network here (load with fusionsearch.load)"),
) -> None:
    """Train one plan and print its metrics (and Delta-m against single-task baselines)."""
    from pathlib import Path

    from fusionsearch.nets.io import save
    from fusionsearch.search.experiment import Experiment
    from fusionsearch.train.devices import check_device

    for flag, value in (("--steps", steps), ("--batch-size", batch_size), ("--eval-every", eval_every)):
        at_least(flag, value, 1)
    for flag, path in (("--out", out), ("--save-metrics", save_metrics), ("--checkpoint", checkpoint)):
        check_out(path, flag)
    check_device(device)
    r = load_recipe_with(recipe, backbone, tasks, data, size, train_images, val_images, labelled)
    exp = Experiment(r, seed)
    print_labelled(exp)
    if plan == "fused":
        spec = dict(r.plan)
        if unit is not None:
            spec["unit"] = unit
            if unit != r.plan.get("unit"):
                spec.pop("unit_args", None)
        if at is not None:
            spec["at"] = [p.strip() for p in at.split(",") if p.strip()]
        stitch = exp.plan_from(spec)
    else:
        stitch = exp.baseline_plan(plan)
    base = read_baseline(baseline, exp.directions())
    cfg = r.train_config(
        steps=steps,
        batch_size=batch_size,
        base_lr=lr,
        optimizer=optimizer,
        eval_every=eval_every,
        seed=seed,
        weighting=weighting,
        deterministic=deterministic or None,
    )
    result = exp.train(
        stitch, cfg=cfg, loss_weights=parse_weights(loss_weight) or None, device=device, checkpoint=checkpoint
    )
    directions = exp.directions()
    title = f"{r.backbone} {plan} {stitch.unit if plan == 'fused' else ''} after {result.step} steps"
    table = Table(title=title)
    for col in ("task", "metric", "value", "better", *(["single-task"] if base else [])):
        table.add_column(col)
    for t, metrics in result.metrics.items():
        for m, v in metrics.items():
            row = [t, m, f"{v:.2f}", "higher" if directions[t][m] else "lower"]
            table.add_row(*row, *([f"{base[t][m]:.2f}"] if base else []))
    console.print(table)
    if base:
        console.print(f"Delta-m vs single-task: {exp.delta_m(result.metrics, base):+.2f}%", highlight=False)
    if save_metrics:
        Path(save_metrics).parent.mkdir(parents=True, exist_ok=True)
        Path(save_metrics).write_text(json.dumps(result.metrics, indent=2))
    if out:
        save(result.net, out, weighting=result.history.get("weighting"))
        console.print(f"saved to {out}", highlight=False)


def read_baseline(baseline: str | None, directions: Any) -> Any:
    """``--baseline``: a metrics JSON file holding a finite number for every metric of every task."""
    from pathlib import Path

    from fusionsearch.search.experiment import check_metrics

    if baseline is None:
        return None
    path = Path(baseline)
    if not path.is_file():
        raise FileNotFoundError(f"baseline metrics {baseline!r} do not exist")
    try:
        base = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ArgumentError(f"--baseline {baseline!r} is not a metrics JSON file: {e}") from None
    check_metrics(base, directions, baseline)
    return base


def _devices(spec: str, workers: int) -> list[str]:
    from fusionsearch.train.devices import assign_devices

    at_least("--workers", workers, 1)
    if workers > MAX_WORKERS:
        raise ArgumentError(f"--workers must be <= {MAX_WORKERS} (one process each), got {workers}")
    return assign_devices(spec, workers)


def labelled_suffix(labelled: list[str] | None) -> str:
    """The default study name's tail for ``--labelled``: another labelling is another study."""
    if not labelled:
        return ""
    from pathlib import Path

    items = parse_labelled(labelled).items()
    parts = [f"{t}{v:g}" if isinstance(v, float) else f"{t}-{Path(v).stem}" for t, v in items]
    return "-labelled-" + "-".join(parts)


def print_labelled(exp: Any) -> None:
    """Which tasks are labelled on which share of the training images (nothing when all are)."""
    from fusionsearch.data import describe_labelled

    if exp.recipe.data.get("labelled"):
        console.print(describe_labelled(exp.datasets()[0]), highlight=False)


def print_conventions(r: Any) -> None:
    """Which fusion learning rates and BatchNorm start a study's plans get (README Conventions)."""
    from fusionsearch.nets.conventions import describe_bn_init, describe_lr_mults

    cfg = r.train_config()
    console.print(describe_lr_mults(cfg.optimizer), highlight=False)
    console.print(describe_bn_init(cfg.bn_init, cfg.bn_calibration_batches), highlight=False)


def run_study(
    study_obj: Any, settings: Any, workers: int, devices: str, quiet: bool, artifacts: str | None, steps_total: int
) -> None:
    """Run the queued trials here (one worker) or in worker processes with the live view."""
    from fusionsearch.search.worker import run_workers

    bad, logs = run_workers(
        study_obj,
        settings,
        _devices(devices, workers),
        quiet=quiet,
        artifacts=artifacts,
        steps_total=steps_total,
        console=console,
    )
    if bad:
        err_console.print(f"workers {bad} exited with an error: see {logs}", highlight=False)


def _study_trials(r: Any, n: Any) -> int:
    """A recipe's ``study.trials``: a number, or ``grid`` for every point of its grid."""
    if n != "grid":
        return int(n)
    from fusionsearch.search import grid_points

    return len(grid_points(r))


@app.command()
def run(
    recipe: RecipeOpt = "quick",
    backbone: str | None = typer.Option(None, "--backbone", "-b", help="timm model name (default: the recipe's)"),
    tasks: str | None = typer.Option(None, help="comma separated tasks, e.g. seg,normal"),
    data: DataOpt = None,
    size: SizeOpt = None,
    labelled: LabelledOpt = None,
    trials: int | None = typer.Option(None, help="sampled trials after the baselines (default: the recipe's)"),
    timeout: float | None = typer.Option(None, help="stop starting trials after this many seconds"),
    study: str | None = typer.Option(None, help="study name (default from recipe, backbone, tasks): rerun resumes"),
    storage: StorageOpt = None,
    workers: WorkersOpt = 1,
    devices: DevicesOpt = "auto",
    sampler: str | None = typer.Option(
        None, help="tpe, nsga2, random, or grid (every combination of the recipe's choice lists)"
    ),
    pruner: str | None = typer.Option(
        None,
        help="successive_halving, hyperband, median or none (one objective only: Optuna cannot prune multi-objective)",
    ),
    objectives: str | None = typer.Option(
        None, help="delta_m (default), or several: delta_m,params / delta_m,latency (NSGA-II, Pareto front, no pruning)"
    ),
    steps: int | None = typer.Option(None, help="training steps per trial"),
    report: str | None = typer.Option(None, help="HTML report path (default STUDY-report.html)"),
    artifacts: ArtifactsOpt = None,
    seed: int | None = typer.Option(None, help="study seed"),
    confirm: int | None = typer.Option(
        None,
        help="fresh seeds that retrain the winners and baselines after the search (default: the recipe's, 3; 0 skips)",
    ),
    confirm_top: int | None = typer.Option(None, help="searched plans to confirm (default: the recipe's, 2)"),
    confirm_per: str | None = typer.Option(
        None, help="confirm the top plans for each value of this search parameter, e.g. weighting"
    ),
    keep_nets: str = typer.Option(
        "confirmed", help="trained nets kept as artefacts: confirmed (baselines and confirmed plans) or all"
    ),
    deterministic: DeterministicOpt = False,
    quiet: bool = typer.Option(False, "--quiet", help="plain log lines instead of the live view"),
) -> None:
    """Run an architecture search: warm start and baselines first, then sampled plans with pruning,
    then the winners and baselines confirmed over fresh seeds; resumable."""
    from pathlib import Path

    from fusionsearch.report.html import write_report
    from fusionsearch.report.leaderboard import confirmation_table, trials_table
    from fusionsearch.search import StudySettings, prepare_confirmation, prepare_study

    quiet_optuna()
    from fusionsearch.search.confirm import summarize
    from fusionsearch.search.experiment import Experiment
    from fusionsearch.search.storage import DEFAULT_STORAGE, redact

    at_least("--steps", steps, 1)
    at_least("--trials", trials, 0)
    at_least("--timeout", timeout, 0)
    check_seed(seed)
    r = load_recipe_with(recipe, backbone, tasks, data, size, labelled=labelled)
    fusion_tasks(r)
    _devices(devices, workers)  # a missing GPU is an error now, not a failure of every trial
    if steps is not None:
        r.train = {**r.train, "steps": steps}
    if deterministic:  # part of the recipe: workers on other machines train the same way
        r.train = {**r.train, "deterministic": True}
    st = dict(r.study)
    settings = StudySettings(
        study=study or f"{r.name}-{r.backbone}-{'-'.join(r.tasks)}{labelled_suffix(labelled)}",
        storage=DEFAULT_STORAGE if storage is None else storage,
        trials=trials if trials is not None else _study_trials(r, st.get("trials", 8)),
        timeout=timeout if timeout is not None else st.get("timeout"),
        sampler=sampler or st.get("sampler", "tpe"),
        pruner=pruner or st.get("pruner", "hyperband"),
        objectives=objectives.split(",") if objectives else list(st.get("objectives", ["delta_m"])),
        artifacts=artifacts,
        seed=seed if seed is not None else int(st.get("seed", 0)),
        confirm_top=confirm_top if confirm_top is not None else r.confirm_config()["top"],
        confirm_seeds=confirm if confirm is not None else r.confirm_config()["seeds"],
        confirm_per=confirm_per or r.confirm_config()["per"],
        keep_nets=keep_nets,
    )
    if settings.multi_objective and settings.sampler == "tpe" and sampler is None:
        settings.sampler = "nsga2"
    check_out(report or f"{settings.study}-report.html", "--report")
    study_obj = prepare_study(r, settings)
    url = redact(settings.storage)
    queued = sum(t.state.name == "WAITING" for t in study_obj.get_trials(deepcopy=False))
    total = len(study_obj.get_trials(deepcopy=False))
    console.print(f"study [bold]{settings.study}[/] in {url}: {settings.trials} trials + baselines", highlight=False)
    print_conventions(r)
    print_labelled(Experiment(r, settings.seed))
    if total > queued:
        console.print(f"resuming: {total - queued} trials there already, {queued} queued", highlight=False)
    running = sum(t.state.name == "RUNNING" for t in study_obj.get_trials(deepcopy=False))
    if running and settings.storage.startswith("journal:"):
        err_console.print(
            f"note: {running} trial(s) RUNNING in a journal storage, which has no heartbeats: if their worker"
            " died they stay RUNNING and are not retried (an SQLite or PostgreSQL storage retries them)",
            highlight=False,
        )
    steps_total = r.train_config().steps
    run_study(study_obj, settings, workers, devices, quiet, artifacts, steps_total)
    added, why_not = prepare_confirmation(study_obj, settings)
    if why_not is None and any(t.state.name == "WAITING" for t in study_obj.get_trials(deepcopy=False)):
        say = f"confirmation: {added} trials queued" if added else "confirmation: resuming"
        console.print(
            f"{say} (top {settings.confirm_top} plans and the baselines, {settings.confirm_seeds} fresh seeds)",
            highlight=False,
        )
        run_study(study_obj, settings, workers, devices, quiet, artifacts, steps_total)
    elif why_not is not None and why_not.startswith("confirm per"):
        raise ArgumentError(f"{why_not}; the search is kept: run again with the right --confirm-per")
    elif why_not is not None and settings.confirm_seeds:
        err_console.print(f"note: {why_not}", highlight=False)
    wide = Console(width=max(console.width, 160))
    wide.print(trials_table(study_obj, f"study {settings.study}: the search (one run per plan)", compact=True))
    conf = summarize(study_obj)
    table = confirmation_table(study_obj, conf)
    if table is not None:
        wide.print(table)
    console.print(study_obj.user_attrs.get("delta_m_convention", ""), highlight=False)
    console.print(f"[bold]{conf.verdict()}[/]", highlight=False)
    out = Path(report or f"{settings.study}-report.html")
    write_report(study_obj, out, settings.storage, artifacts, to_dashboard=True)
    console.print(f"report: {out}", highlight=False)


@app.command()
def compare(
    recipe: RecipeOpt = "quick",
    data: DataOpt = None,
    size: SizeOpt = None,
    labelled: LabelledOpt = None,
    steps: int | None = typer.Option(None, help="training steps of every row (the same budget for all)"),
    trials: int | None = typer.Option(None, help="searched trials for the 'search_best' row (default: the recipe's)"),
    study: str | None = typer.Option(None, help="study name (default RECIPE-compare): rerun resumes"),
    storage: StorageOpt = None,
    workers: WorkersOpt = 1,
    devices: DevicesOpt = "auto",
    out: str = typer.Option(".", help="folder for RECIPE-compare.md and .csv"),
    artifacts: ArtifactsOpt = None,
    confirm: int | None = typer.Option(None, help="fresh seeds for every row (default: the recipe's, 3; 0 skips)"),
    quiet: bool = typer.Option(False, "--quiet", help="plain log lines"),
) -> None:
    """Train the rows of the paper's table (single-task, multi-task baseline, cross-stitch, sluice,
    NDDR, our search's best) under one budget; print them next to the paper's numbers."""
    from pathlib import Path

    from fusionsearch.report.compare import build_comparison, compare_rows, is_grid
    from fusionsearch.search import StudySettings, grid_points, prepare_confirmation, prepare_study

    quiet_optuna()
    from fusionsearch.search.experiment import Experiment
    from fusionsearch.search.storage import DEFAULT_STORAGE

    at_least("--steps", steps, 1)
    at_least("--trials", trials, 0)
    check_out(out, "--out", folder=True)
    r = load_recipe_with(recipe, None, None, data, size, labelled=labelled)
    fusion_tasks(r)
    _devices(devices, workers)
    if steps is not None:
        r.train = {**r.train, "steps": steps}
    baselines = list(dict.fromkeys(["single", *compare_rows(r).values()]))
    grid = is_grid(r)
    settings = StudySettings(
        study=study or f"{r.name}-compare{labelled_suffix(labelled)}",
        storage=DEFAULT_STORAGE if storage is None else storage,
        trials=len(grid_points(r))
        if grid
        else trials
        if trials is not None
        else int(r.compare.get("search_trials", 4)),
        sampler="grid" if grid else r.study.get("sampler", "tpe"),
        pruner="none",  # every row of a table runs its whole budget
        baselines=baselines,
        artifacts=artifacts,
        seed=int(r.study.get("seed", 0)),
        confirm_top=r.confirm_config()["top"],
        confirm_seeds=confirm if confirm is not None else r.confirm_config()["seeds"],
    )
    study_obj = prepare_study(r, settings)
    what = "grid points" if grid else "searched trials"
    console.print(
        f"comparison {settings.study}: rows {', '.join(baselines)} + {settings.trials} {what}", highlight=False
    )
    print_conventions(r)
    print_labelled(Experiment(r, settings.seed))
    run_study(study_obj, settings, workers, devices, quiet, artifacts, r.train_config().steps)
    added, why_not = prepare_confirmation(study_obj, settings)
    if why_not is None:
        console.print(f"confirmation over {settings.confirm_seeds} fresh seeds: {added} trials queued", highlight=False)
        run_study(study_obj, settings, workers, devices, quiet, artifacts, r.train_config().steps)
    table = build_comparison(study_obj, r)
    Console(width=max(console.width, 160)).print(table.rich())
    console.print(table.convention, highlight=False)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    md, csv_path = folder / f"{r.name}-compare.md", folder / f"{r.name}-compare.csv"
    md.write_text(table.markdown())
    csv_path.write_text(table.csv())
    console.print(f"written: {md}, {csv_path}", highlight=False)


@app.command()
def worker(
    study: StudyOpt,
    storage: StorageOpt = None,
    device: str = typer.Option("auto", help="cpu or cuda:N"),
    timeout: float | None = typer.Option(None, help="stop starting trials after this many seconds"),
    threads: int | None = typer.Option(None, help="CPU threads for torch"),
    artifacts: ArtifactsOpt = None,
    worker_index: int | None = typer.Option(
        None,
        help="this worker's number in the study (0, 1, ...), which seeds its sampler: give each worker its own"
        " to make a study repeat exactly (default: drawn from the process id)",
    ),
    shares_device: bool = typer.Option(
        False,
        "--shares-device",
        help="other workers train on this GPU too: running out of memory is then an accident (queued again),"
        " not the plan's verdict",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Join a study (from this or another machine) and run its queued trials on one device."""
    import torch

    from fusionsearch.search import run_worker

    quiet_optuna()
    from fusionsearch.search.storage import DEFAULT_STORAGE
    from fusionsearch.train.devices import check_device

    check_device(device)
    at_least("--threads", threads, 1)
    at_least("--worker-index", worker_index, 0)
    if threads:
        torch.set_num_threads(threads)
    n = run_worker(
        study,
        DEFAULT_STORAGE if storage is None else storage,
        device=device,
        timeout=timeout,
        artifacts=artifacts,
        progress=not quiet,
        log=lambda m: console.print(m, highlight=False),
        # workers started by hand without an index must not all sample the same plans
        worker=worker_index if worker_index is not None else 1000 + os.getpid(),
        shares_device=shares_device,
    )
    console.print(f"worker done: {n} trials", highlight=False)


@app.command()
def trials(
    study: StudyOpt,
    storage: StorageOpt = None,
    as_json: bool = typer.Option(False, "--json", help="one JSON list of trials"),
) -> None:
    """A table of the study's trials (plan, metrics, Delta-m, state, failure reason) and the
    confirmation: mean ± 95% interval per plan and the paired test against the best baseline."""
    from fusionsearch.report.leaderboard import confirmation_table, trial_rows, trials_table
    from fusionsearch.search import load_study

    quiet_optuna()
    from fusionsearch.search.confirm import summarize
    from fusionsearch.search.storage import DEFAULT_STORAGE

    st, _, _ = load_study(study, DEFAULT_STORAGE if storage is None else storage)
    if as_json:
        console.print_json(json.dumps(trial_rows(st), default=str))
        return
    wide = Console(width=200)
    wide.print(trials_table(st))
    conf = summarize(st)
    table = confirmation_table(st, conf)
    if table is not None:
        wide.print(table)
    console.print(st.user_attrs.get("delta_m_convention", ""), highlight=False)
    console.print(conf.verdict(), highlight=False)


@app.command()
def best(
    study: StudyOpt,
    storage: StorageOpt = None,
    out: str = typer.Option("best.pt", help="where to write the best plan's network"),
    artifacts: ArtifactsOpt = None,
) -> None:
    """Export the network of the plan that is best after confirmation (the highest mean Delta-m over
    the fresh seeds), or of the best single run when the study ran no confirmation."""
    import os
    import tempfile
    from pathlib import Path

    from optuna.artifacts import download_artifact

    from fusionsearch.nets.io import load
    from fusionsearch.report.leaderboard import best_trial, plan_summary
    from fusionsearch.search import load_study

    quiet_optuna()
    from fusionsearch.search.confirm import summarize
    from fusionsearch.search.storage import DEFAULT_STORAGE, artifact_store

    url = DEFAULT_STORAGE if storage is None else storage
    st, _, _ = load_study(study, url)
    conf = summarize(st)
    top = conf.best
    chosen: Any
    if top is not None and top.net_trial is not None:
        chosen = st.trials[top.net_trial]
        what = f"{top.label}, confirmed Delta-m {top.interval} over seeds ({conf.verdict()})"
    else:
        chosen = best_trial(st)
        if chosen is None:
            raise FusionSearchError(f"study {study!r} has no complete trial yet")
        what = f"trial {chosen.number}, one run, not confirmed over seeds"
    if "model_artifact" not in chosen.user_attrs:
        raise FusionSearchError(
            f"trial {chosen.number} kept no network (studies keep the baselines' and the confirmed plans'; "
            "run with --keep-nets all to keep every one, or let the confirmation finish)"
        )
    check_out(out, "--out")
    target = Path(out)
    if target.exists() and not target.stat().st_mode & 0o222:  # the mode, not os.access: root may write anyway
        raise FusionSearchError(f"--out {out!r} is write-protected: it is left as it is; choose another file")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    os.unlink(tmp)  # download_artifact refuses an existing file
    try:  # the user's file is replaced only by a complete download that loads as a network
        try:
            download_artifact(
                artifact_store=artifact_store(url, artifacts, create=False),
                file_path=tmp,
                artifact_id=chosen.user_attrs["model_artifact"],
            )
        except Exception as e:
            raise FusionSearchError(
                f"the network of trial {chosen.number} cannot be read from the artefact store"
                f" ({type(e).__name__}: {e}); {out!r} is left as it was"
            ) from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FusionSearchWarning)
                load(tmp, trust=True)  # this study's own worker wrote it: check it is whole
        except FusionSearchError as e:
            raise FusionSearchError(
                f"the network of trial {chosen.number} is damaged ({e}); {out!r} is left as it was"
            ) from None
        if target.exists():  # the replacement keeps the file's permissions, not mkstemp's 0600
            os.chmod(tmp, target.stat().st_mode & 0o7777)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    console.print(f"{what}: {plan_summary(chosen.user_attrs.get('plan'))} -> {out}", highlight=False)


@app.command()
def report(
    study: StudyOpt,
    storage: StorageOpt = None,
    out: str = typer.Option("report.html", help="HTML file to write"),
    artifacts: ArtifactsOpt = None,
    to_dashboard: bool = typer.Option(
        False, "--to-dashboard", help="also store the figures in the study for optuna-dashboard (writes the storage)"
    ),
) -> None:
    """Write the study's HTML report (history, importances, Pareto front, parallel coordinates,
    placement map, learned fusion weights). Only reads the study, unless --to-dashboard."""
    from fusionsearch.report.html import write_report
    from fusionsearch.search import load_study

    quiet_optuna()
    from fusionsearch.search.storage import DEFAULT_STORAGE

    url = DEFAULT_STORAGE if storage is None else storage
    st, _, _ = load_study(study, url)
    console.print(f"report: {write_report(st, out, url, artifacts, to_dashboard=to_dashboard)}", highlight=False)


@app.command()
def dashboard(
    storage: StorageOpt = None,
    host: str = typer.Option("127.0.0.1", help="address to listen on (loopback by default)"),
    port: int = typer.Option(8080, help="port"),
    artifacts: ArtifactsOpt = None,
) -> None:
    """Serve optuna-dashboard on the storage, with the trials' artefacts."""
    from optuna_dashboard import run_server

    from fusionsearch.search.storage import DEFAULT_STORAGE, artifact_store, open_storage, redact

    url = DEFAULT_STORAGE if storage is None else storage
    st = open_storage(url, heartbeat=False, create=False)
    check_port(host, port)
    console.print(f"optuna-dashboard for {redact(url)} on http://{host}:{port}/ (Ctrl-C stops)", highlight=False)
    run_server(
        st,
        host=host,
        port=port,
        artifact_store=artifact_store(url, artifacts),
    )


def check_port(host: str, port: int) -> None:
    """The dashboard's address can be listened on: a busy port is one line naming it, before the
    server prints its banner."""
    import socket

    if not 0 < port < 65536:
        raise ArgumentError(f"--port must be in 1..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ArgumentError(f"--host {host!r} cannot be resolved: {e}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what the server sets: TIME_WAIT is no conflict
        try:
            s.bind(address)
        except OSError as e:
            raise ArgumentError(
                f"cannot listen on {host}:{port} ({e.strerror or e}): the port is in use or not allowed; choose"
                " another with --port"
            ) from None


LISTS = ("units", "tasks", "datasets", "weightings", "recipes")


@app.command("list")
def list_(what: str = typer.Argument("units", help="units, tasks, datasets, weightings or recipes")) -> None:
    """List what is registered: fusion units, tasks, data sets, or the recipes found."""
    from fusionsearch.data import DATASETS
    from fusionsearch.nets.fusion import FUSION_UNITS
    from fusionsearch.search.recipe import list_recipes, load_recipe
    from fusionsearch.tasks.task import TASKS
    from fusionsearch.tasks.weighting import WEIGHTINGS

    if what not in LISTS:
        raise ArgumentError(f"fusionsearch list {what!r}: choose {', '.join(LISTS)}")
    table = Table(title=what.capitalize(), title_justify="left")
    table.add_column("name")
    if what == "tasks":
        table.add_column("label")
    table.add_column("what")
    rows: list[tuple[str, ...]] = []
    if what == "recipes":
        for name, path in list_recipes().items():
            try:
                rows.append((name, load_recipe(path).reproduces or str(path)))
            except FusionSearchError as e:
                rows.append((name, f"(invalid: {e})"))
    else:
        registry: Any = {"units": FUSION_UNITS, "tasks": TASKS, "datasets": DATASETS, "weightings": WEIGHTINGS}[what]
        for name, cls in sorted(registry.items()):
            first = (cls.__doc__ or "").strip().splitlines()
            label = (cls.label,) if what == "tasks" else ()
            rows.append((name, *label, first[0] if first else ""))
    for row in rows:
        table.add_row(*row)
    Console(width=max(console.width, 140)).print(table)


@app.command()
def units() -> None:
    """List the registered fusion units (the same as `fusionsearch list units`)."""
    list_("units")


def main() -> None:
    try:
        app()
    finally:  # the interpreter's shutdown still runs finalisers (database connections)
        sys.unraisablehook = _Unraisable(at_exit=True)


if __name__ == "__main__":
    main()
