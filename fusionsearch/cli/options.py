"""The command line's options, declared once, and the parsing of their values.

Every option is an ``Annotated`` type here, so that a command's signature is one line per
option and the same flag means the same thing in every command. The parsers turn text into the
library's values and refuse bad text with one line naming the flag (``ArgumentError``), before
anything is built or stored; the rules about studies live in the library, not here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from fusionsearch.errors import ArgumentError
from fusionsearch.paths import read_input_text

__all__ = [
    "MAX_WORKERS",
    "PluginOpt",
    "use_plugins",
    "at_least",
    "check_port",
    "check_seed",
    "devices_for",
    "load_recipe_with",
    "parse_at",
    "parse_init",
    "parse_labelled",
    "parse_leaf",
    "parse_size",
    "parse_weights",
    "read_baseline",
    "task_list",
    "check_worker_index",
]

MAX_WORKERS = 256

RECIPE_HELP = "recipe name (recipes/NAME.yaml) or YAML file; other options override it"
DATA_HELP = (
    "a registered data set, NAME or NAME:ROOT, e.g. synthetic or nyuv2:/data/nyud"
    " (`fusionsearch list datasets`; default: the recipe's)"
)
STORAGE_HELP = (
    "Optuna storage URL (default: an SQLite file here; postgresql://... for many machines);"
    " FUSIONSEARCH_STORAGE keeps a password off the command line"
)
LABELLED_HELP = (
    "TASK=SHARE or TASK=ID_FILE: keep TASK's label on that share of the training images (seg=0.1)"
    " or on the ids the file lists; the others lose it (validation stays fully labelled); repeatable"
)
PLUGIN_HELP = (
    "a module name or a .py file that registers data sets, tasks, fusion units or weightings, loaded before"
    " anything else; repeatable (README Extending it)"
)
DETERMINISTIC_HELP = (
    "torch's deterministic algorithms (on a GPU: the same numbers on every rerun, slower; see README On GPUs)"
)


# shared by several commands
RecipeOpt = Annotated[str, typer.Option(help=RECIPE_HELP)]
DataOpt = Annotated[str | None, typer.Option(help=DATA_HELP)]
SizeOpt = Annotated[int | None, typer.Option(help="image size")]
LEAF_HELP = "module class name or path not to trace into, in every column (or TASK=NAME: in that task's); repeatable"
LeafOpt = Annotated[list[str] | None, typer.Option("--leaf", help=LEAF_HELP)]
StudyOpt = Annotated[str, typer.Option(help="study name")]
ArtifactsOpt = Annotated[str | None, typer.Option(help="artifact folder (default: beside the SQLite file)")]
StorageOpt = Annotated[str | None, typer.Option(envvar="FUSIONSEARCH_STORAGE", help=STORAGE_HELP)]
WorkersOpt = Annotated[int, typer.Option(help="worker processes, each on one device")]
DevicesOpt = Annotated[str, typer.Option(help="auto (every visible GPU, else CPU), cpu, or cuda:0,cuda:1")]
DeterministicOpt = Annotated[bool, typer.Option("--deterministic", help=DETERMINISTIC_HELP)]
LabelledOpt = Annotated[list[str] | None, typer.Option("--labelled", help=LABELLED_HELP)]
BackboneOpt = Annotated[str | None, typer.Option("--backbone", "-b", help="timm model name (default: the recipe's)")]
TasksOpt = Annotated[str | None, typer.Option(help="comma separated task names, e.g. seg,normal")]
InputSizeOpt = Annotated[str | None, typer.Option(help="C,H,W of the example input (default: the model's)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts instead of tables")]
TimeoutOpt = Annotated[float | None, typer.Option(help="stop starting trials after this many seconds")]
PluginOpt = Annotated[list[str] | None, typer.Option("--plugin", metavar="MODULE_OR_FILE.py", help=PLUGIN_HELP)]


def use_plugins(plugins: list[str] | None) -> list[str]:
    """``--plugin``, repeatable: import each (a relative file from the working folder) before the
    command reads any name, so a recipe, ``--data`` or ``--unit`` may name what they register."""
    from fusionsearch.plugins import load_plugins

    return load_plugins(plugins or [])


def parse_size(text: str | None) -> tuple[int, int, int] | None:
    """``--input-size C,H,W`` (or CxHxW): three whole numbers >= 1."""
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


def parse_at(text: str | None) -> list[str] | None:
    """``--at a,b,c``: cut point names; None keeps the default."""
    return None if text is None else [p.strip() for p in text.split(",") if p.strip()]


def parse_leaf(items: list[str] | None, columns: list[str]) -> list[str] | dict[str, list[str]]:
    """``--leaf NAME`` (every column) or ``--leaf TASK=NAME`` (that task's column), repeatable:
    columns of different backbones name their modules differently. A list when no item names a
    column, else each column's leaves (``build``'s ``leaf``)."""
    every: list[str] = []
    own: dict[str, list[str]] = {}
    for item in items or []:
        column, sep, name = item.partition("=") if "=" in item else ("", "", item)
        if not name.strip() or (sep and not column.strip()):
            raise ArgumentError(f"--leaf takes a module class or path, or TASK=NAME, e.g. seg=layer1; got {item!r}")
        if sep and column.strip() not in columns:
            where = f"the columns are the tasks {', '.join(columns)}" if columns else "one backbone has no columns"
            raise ArgumentError(f"--leaf {item!r} names column {column.strip()!r}, but {where}")
        (own.setdefault(column.strip(), []) if sep else every).append(name.strip())
    return {c: every + own.get(c, []) for c in columns} if own else every


def load_recipe_with(
    recipe: str,
    backbone: str | None,
    tasks: str | None,
    data: str | None,
    size: int | None,
    train_images: int | None = None,
    val_images: int | None = None,
    labelled: list[str] | None = None,
    plugins: list[str] | None = None,
) -> Any:
    """The recipe with the command line's overrides of its backbone, tasks and data, and the
    ``--plugin`` plugins added to its own: loaded first (the recipe and ``--data`` may name what
    they register), kept in the recipe so the study stores them for its workers."""
    from fusionsearch.experiment.recipe import load_recipe, parse_data

    for flag, value in (("--size", size), ("--train-images", train_images), ("--val-images", val_images)):
        at_least(flag, value, 1)
    names = task_list(tasks)
    extra = use_plugins(plugins)
    r = load_recipe(recipe)
    data_spec = parse_data(data, r.data)
    for key, value in (("size", size), ("train_length", train_images), ("val_length", val_images)):
        if value is not None:
            data_spec[key] = value
    if labelled:
        data_spec["labelled"] = {**(data_spec.get("labelled") or {}), **parse_labelled(labelled)}
    if names is not None:  # the recipe's per-task settings were for its own tasks: keep those still here
        r.task_args = {t: a for t, a in r.task_args.items() if t in names}
        weights = r.search.get("loss_weights")
        if isinstance(weights, dict):
            r.search = {**r.search, "loss_weights": {t: w for t, w in weights.items() if t in names}}
    added = list(dict.fromkeys([*r.plugins, *extra])) if extra else None
    return r.with_overrides(backbone=backbone, tasks=names, data=data_spec, plugins=added)


def parse_labelled(items: list[str] | None) -> dict[str, float | str]:
    """``--labelled TASK=SHARE`` (a number in (0, 1]) or ``TASK=FILE`` (a file of item ids)."""
    out: dict[str, float | str] = {}
    for item in items or []:
        for part in item.split(","):
            name, sep, value = part.partition("=")
            if not sep or not name.strip() or not value.strip():
                raise ArgumentError(f"--labelled takes TASK=SHARE or TASK=ID_FILE, e.g. seg=0.1; got {part!r}")
            _once("--labelled", name.strip(), out)
            try:
                out[name.strip()] = float(value)
            except ValueError:
                out[name.strip()] = value.strip()
    return out


def _once(flag: str, task: str, seen: Mapping[str, Any]) -> None:
    """A per-task option names each task once: of two values the last would win silently."""
    if task in seen:
        raise ArgumentError(f"{flag} names {task!r} more than once: give each task one value")


def check_seed(seed: int | None) -> None:
    """``--seed``: the confirmation's seeds are seed x 1000 + i, below 2^32."""
    from fusionsearch.experiment.recipe import MAX_SEED

    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ArgumentError(f"--seed must be in 0..{MAX_SEED:,}, got {seed}")


def check_worker_index(index: int | None) -> int:
    """``--worker-index``: this worker's number in the study, which picks its GPU under ``--device
    auto`` (index modulo the GPUs); None draws one from the process id, so that workers started by
    hand without an index spread over the GPUs. The draws of a trial do not depend on it."""
    import os

    from fusionsearch.experiment.recipe import MAX_SEED

    top = 2**32 - 1 - MAX_SEED * 1000
    if index is None:
        return 1000 + os.getpid() % (top - 1000)
    if not 0 <= index <= top:
        raise ArgumentError(f"--worker-index must be in 0..{top:,}, got {index}")
    return index


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


def parse_weights(items: list[str]) -> dict[str, float]:
    """``--loss-weight TASK=WEIGHT``, repeatable."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, w = item.partition("=")
        _once("--loss-weight", name.strip(), out)
        try:
            out[name.strip()] = float(w)
        except ValueError:
            sep = ""
        if not sep:
            raise ArgumentError(f"--loss-weight takes TASK=WEIGHT, e.g. normal=20; got {item!r}")
    return out


def read_baseline(baseline: str | None, directions: Any) -> Any:
    """``--baseline``: a metrics JSON file holding a finite number for every metric of every task."""
    from fusionsearch.experiment.experiment import check_metrics

    if baseline is None:
        return None
    try:  # a page of numbers: 1 MiB is plenty, and a FIFO or a device is refused, not read
        base = json.loads(read_input_text(baseline, f"--baseline {baseline!r}", 1 << 20))
    except ValueError as e:
        raise ArgumentError(f"--baseline {baseline!r} is not a metrics JSON file: {e}") from None
    check_metrics(base, directions, baseline)
    return base


def devices_for(spec: str, workers: int) -> list[str]:
    """``--devices`` and ``--workers``: one device per worker process; a missing GPU is an error
    now, not a failure of every trial."""
    from fusionsearch.train.devices import assign_devices

    at_least("--workers", workers, 1)
    if workers > MAX_WORKERS:
        raise ArgumentError(f"--workers must be <= {MAX_WORKERS} (one process each), got {workers}")
    return assign_devices(spec, workers)


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
