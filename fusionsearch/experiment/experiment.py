"""From a recipe to trained plans: the data sets, the task objects, the network and one training
run. The ``train`` and ``run`` commands and the search's trials all go through here, so a plan
trained by hand and the same plan trained in a study are trained identically.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from fusionsearch.data import DATASETS, PartialLabels, get_dataset
from fusionsearch.errors import ArgumentError, FusionSearchError, FusionSearchWarning, PlanError
from fusionsearch.experiment.limits import check_limits
from fusionsearch.experiment.recipe import Recipe
from fusionsearch.graph.cuts import BackboneGraph, trace
from fusionsearch.nets.builder import build
from fusionsearch.nets.fusion import FUSION_UNITS
from fusionsearch.nets.net import StitchedNet
from fusionsearch.nets.plan import StitchPlan
from fusionsearch.tasks.task import Task, task_arguments, task_class
from fusionsearch.train.config import TrainConfig
from fusionsearch.train.memory import check_fits
from fusionsearch.train.partial import images_per_step
from fusionsearch.train.trainer import evaluate, fit
from fusionsearch.validation import finite

__all__ = ["Experiment", "BASELINES", "WARMSTART", "COMPARE_ROWS", "TrialResult", "WarmStart", "column_weights_of"]

# The baselines every study trains first: K single-task nets, the fully shared net, and the
# papers' default plan (NDDR after every stage, init (0.9, 0.1), fusion lr x100 under SGD and its
# translation under AdamW, ``conventions``; NDDR-CNN Tables 1-2).
BASELINES = ("single", "shared", "nddr_default")
# The single-task nets trained once at the full budget: every warm-started trial begins from them
# (NDDR-CNN Table 3 and cross-stitch Table 3: the papers' best initialisation).
WARMSTART = "warmstart"
# The rows of the papers' comparison tables (NDDR-CNN Tables 4-7): cross-stitch and sluice at the
# same points as NDDR with their papers' best settings ((0.9, 0.1), lr x100 under SGD; sluice with 2
# subspaces).
COMPARE_ROWS = ("single", "shared", "cross_stitch_default", "sluice_default", "nddr_default")
# no lr_mult: each unit trains at ``conventions.fusion_lr_mult(unit, train.optimizer)``, the papers'
# x100 under SGD (what they tuned it with) and its measured translation under AdamW
PAPER_DEFAULTS: dict[str, Any] = {"init": (0.9, 0.1)}


@dataclass
class TrialResult:
    """One trained plan: final metrics, the step reached, and the net itself."""

    metrics: dict[str, dict[str, float]]
    step: int
    net: StitchedNet
    history: dict[str, Any]
    # per task that defines ``per_category``: category -> metric, from the final evaluation
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)


class Experiment:
    """A recipe made concrete: data, tasks and a traced backbone, ready to train plans."""

    def __init__(self, recipe: Recipe, seed: int | None = None) -> None:
        self.recipe = recipe
        self.seed = int(recipe.defaults.seed if seed is None else seed)
        self._graph: BackboneGraph | None = None
        self._data: tuple[Dataset, Dataset] | None = None
        self._types: dict[str, str] | None = None

    # ---- data and tasks -------------------------------------------------------------------
    def datasets(self) -> tuple[Dataset, Dataset]:
        """The recipe's training and validation sets (made once)."""
        if self._data is None:
            d = dict(self.recipe.data)
            name = d.pop("name")
            labelled = d.pop("labelled", None)
            train_len = d.pop("train_length", None)
            val_len = d.pop("val_length", None)
            size = d.pop("size", None)
            common = {**d, "size": size} if size is not None else d
            cls = DATASETS.get(name)
            if getattr(cls, "takes_seed", False):
                common.setdefault("seed", self.seed)
            if _takes(cls, "tasks"):  # a set that reads (or renders) only what the study uses
                common.setdefault("tasks", list(self.recipe.tasks))
            lengths = getattr(cls, "default_lengths", {}) or {}
            train_len, val_len = train_len or lengths.get("train"), val_len or lengths.get("val")
            train = get_dataset(name, split="train", length=train_len, **common)
            if labelled:  # only the training split loses labels: every plan is scored on the same pixels
                train = PartialLabels(train, labelled, seed=self.seed)
            self._data = (
                _cached(train),
                _cached(get_dataset(name, split="val", length=val_len, **common)),
            )
        return self._data

    def check_fusion_tasks(self, read_data: bool = True) -> None:
        """A fusion study needs two tasks to fuse (one task has nothing to search: every sampled
        trial would fail), and a data set that labels every task; checked before a study exists.
        ``read_data=False`` asks the data set's class instead of reading the data."""
        tasks = self.recipe.tasks
        if len(tasks) < 2:
            raise ArgumentError(
                f"fusion needs at least 2 tasks, the study has {len(tasks)} ({', '.join(tasks)}):"
                " add one with --tasks, or train a single-task net with `fusionsearch train --plan single`"
            )
        self.task_sizes(read_data=read_data)

    def task_sizes(self, read_data: bool = True) -> dict[str, int]:
        """Output size of each task: what the data set provides (e.g. 13 or 40 NYUv2 classes).
        ``read_data=False`` asks the data set class (``tasks_for``), so that a recipe's network can
        be built without its data on disk."""
        if read_data or self._data is not None:
            provided: Mapping[str, int] = getattr(self.datasets()[0], "tasks", {})
        else:
            cls = DATASETS.get(self.recipe.data["name"])
            args = {k: v for k, v in self.recipe.data.items() if k not in ("name", "labelled")}
            if hasattr(cls, "tasks_for") and _takes(cls.tasks_for, "tasks"):
                args.setdefault("tasks", list(self.recipe.tasks))
            provided = cls.tasks_for(**args) if hasattr(cls, "tasks_for") else getattr(cls, "tasks", {})
        missing = [t for t in self.recipe.tasks if t not in provided]
        if missing:
            data = self.recipe.data.get("name")
            raise PlanError(f"the {data} data set has labels for {sorted(provided)}, not {missing}")
        return {t: int(provided[t]) for t in self.recipe.tasks}

    def tasks(self, loss_weights: Mapping[str, float] | None = None) -> dict[str, Task]:
        """The task objects; ``loss_weights`` (task -> weight) replace the recipe's for this run."""
        unknown = sorted(set(loss_weights or {}) - set(self.recipe.tasks))
        if unknown:
            raise ArgumentError(
                f"loss weights name {', '.join(map(repr, unknown))}, not a task of this study"
                f" ({', '.join(self.recipe.tasks)})"
            )
        out = {}
        types = self.types
        for t, n in self.task_sizes().items():
            args = task_arguments(self.recipe.task_args.get(t))
            if loss_weights and t in loss_weights:
                args["loss_weight"] = float(loss_weights[t])
            out[t] = task_class(t, types)(out_channels=n, **args)
        return out

    def data_notes(self) -> list[str]:
        """What the data set's class says a person should know before training (its ``notes_for``:
        a folder's class counts read from the labels, its split, what it ignored); none for most."""
        cls = DATASETS.get(self.recipe.data["name"])
        return list(cls.notes_for(**self.recipe.data_args())) if hasattr(cls, "notes_for") else []

    @property
    def types(self) -> dict[str, str]:
        """Each task's registered type where its name is not one (``Recipe.task_types``), read once."""
        if self._types is None:
            self._types = self.recipe.task_types()
        return self._types

    def directions(self) -> dict[str, dict[str, bool]]:
        """Task -> metric -> higher is better (class attributes: no data needed)."""
        return {t: dict(task_class(t, self.types).metrics) for t in self.recipe.tasks}

    # ---- the network ----------------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int, int]:
        return (3, *self.recipe.image_size)

    def graph(self) -> BackboneGraph:
        """The recipe's backbone, traced once at the recipe's input size."""
        if self._graph is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FusionSearchWarning)
                self._graph = trace(self.recipe.backbone, self.input_size, **self.recipe.backbone_args)
        return self._graph

    def points(self, which: str | list[str] = "boundaries") -> list[str]:
        """Candidate fusion points: ``boundaries`` (stage ends), ``cuts`` (every cut point) or names."""
        g = self.graph()
        if which == "boundaries":
            return [b.name for b in g.boundaries]
        if which == "cuts":
            return [c.name for c in g.cut_points[:-1]] + [g.cut_points[-1].name]
        if isinstance(which, list):
            for n in which:
                g.resolve(n)
            return list(which)
        raise PlanError(f"points must be 'boundaries', 'cuts' or a list of names, got {which!r}")

    def search_points(self) -> list[str]:
        """The candidate points of the recipe's search space (``search.points``)."""
        return self.points(self.recipe.space.points)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every point of the recipe's grid (``SearchSpace.grid_points``) over its candidate points."""
        return self.recipe.space.grid_points(self.search_points())

    def plan_from(self, spec: Mapping[str, Any] | StitchPlan) -> StitchPlan:
        """A StitchPlan from a recipe's ``plan`` mapping; ``at: boundaries`` means every boundary."""
        if isinstance(spec, StitchPlan):
            return spec
        d = dict(spec)
        at = d.get("at", [])
        if isinstance(at, str):
            d["at"] = self.points(at) if at in ("boundaries", "cuts") else [a.strip() for a in at.split(",")]
        if d.get("shared_prefix") == "last":
            d["shared_prefix"] = self.points("boundaries")[-1]
        return StitchPlan.from_dict(d)

    def plan_for(self, kind: str = "fused", unit: str | None = None, at: Sequence[str] | None = None) -> StitchPlan:
        """What ``fusionsearch train --plan KIND`` trains: ``fused`` is the recipe's plan with its
        unit (a new unit drops the old unit's arguments) and points replaced where given; any
        other kind is a baseline (``baseline_plan``)."""
        if kind != "fused":
            return self.baseline_plan(kind)
        spec = dict(self.recipe.plan)
        if unit is not None:
            if unit != spec.get("unit"):
                spec.pop("unit_args", None)
            spec["unit"] = unit
        if at is not None:
            spec["at"] = list(at)
        return self.plan_from(spec)

    def baseline_plan(self, name: str) -> StitchPlan:
        """``single``, ``shared``, or ``UNIT_default``: that unit at the recipe plan's points (every
        boundary by default) with the papers' settings, keeping the recipe's shortcut choice."""
        bounds = self.points("boundaries")
        if name == "single":
            return StitchPlan(at=[])
        if name == "shared":
            return StitchPlan(at=[], shared_prefix=bounds[-1])
        if name.startswith("split@"):  # the cross-stitch paper's split architectures
            point = name.removeprefix("split@")
            self.graph().resolve(point)
            return StitchPlan(at=[], shared_prefix=point)
        unit = name.removesuffix("_default")
        if name.endswith("_default") and unit in FUSION_UNITS:
            paper = self.plan_from(self.recipe.plan)
            args = dict(PAPER_DEFAULTS)
            if paper.unit == unit:  # the recipe's own settings for its unit win (e.g. the shortcut's width)
                args.update(paper.unit_args)
            return StitchPlan(
                at=paper.at or bounds,
                unit=unit,
                unit_args=args,
                shortcut=paper.shortcut,
                shortcut_channels=paper.shortcut_channels,
                shortcut_init=paper.shortcut_init,
                shortcut_resize=paper.shortcut_resize,
            )
        units = ", ".join(f"{u}_default" for u in sorted(FUSION_UNITS))
        raise PlanError(f"unknown baseline {name!r}; baselines: single, shared, split@POINT, {units}")

    def build(
        self,
        plan: StitchPlan,
        column_weights: Any = None,
        read_data: bool = True,
        start: WarmStart | None = None,
        init_seed: int | None = None,
    ) -> StitchedNet:
        """``plan`` on the recipe's backbone. ``start``: columns and heads from trained single-task
        nets; ``init_seed``: every new module drawn from (seed, its name), see ``stitch.build``."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FusionSearchWarning)
            net = build(
                self.recipe.backbone,
                self.task_sizes(read_data),
                plan,
                input_size=self.input_size,
                pretrained=self.recipe.pretrained,
                task_args=self.head_args(),
                column_weights=start.columns if start is not None else column_weights,
                init_seed=init_seed,
                **self.recipe.backbone_args,
            )
        if start is not None:
            start.load_heads(net)
        return net

    def head_args(self) -> dict[str, dict[str, Any]]:
        """Per task, the arguments that shape its head, with its registered type where its name is
        not one, so that a saved net rebuilds the same heads without the study's data."""
        out = {t: _head_args(a) for t, a in self.recipe.task_args.items()}
        for t, typ in self.types.items():
            out[t] = {**out.get(t, {}), "task": typ}
        return out

    # ---- training -------------------------------------------------------------------------
    def train(
        self,
        plan: StitchPlan,
        *,
        cfg: TrainConfig | None = None,
        loss_weights: Mapping[str, float] | None = None,
        device: str | torch.device | None = None,
        callback: Callable[[int, dict[str, dict[str, float]]], None] | None = None,
        checkpoint: str | None = None,
        progress: bool = True,
        column_weights: Any = None,
        start: WarmStart | None = None,
    ) -> TrialResult:
        """Build ``plan`` with the recipe's backbone (columns from ``column_weights``, or columns and
        heads from ``start``) and train it on the recipe's data. New modules are drawn from
        ``cfg.seed`` and their names, so plans trained with one seed share their random start."""
        cfg = cfg or self.recipe.train_config()
        check_limits(self.recipe.data, self.recipe.tasks, cfg)  # a command's or a trial's overrides too
        cfg.progress = progress and cfg.progress
        torch.manual_seed(cfg.seed)
        net = self.build(plan, column_weights, start=start, init_seed=cfg.seed)
        train, val = self.datasets()
        images = images_per_step(cfg.batches, cfg.batch_size, train, list(net.tasks))
        check_fits(net, cfg, self.input_size, device, images)  # a plan over the device's memory fails here, untrained
        tasks = self.tasks(loss_weights)
        history = fit(net, tasks, train, val, cfg, device=device, callback=callback, checkpoint=checkpoint)
        if history["evals"] and history["evals"][-1]["step"] == history["step"]:
            metrics = history["evals"][-1]["metrics"]
        else:
            metrics = evaluate(net, tasks, val, cfg.batch_size, device)
        # the tasks still hold the final evaluation's state (the last one ``fit`` ran, or the one above)
        per = {t: task.per_category() for t, task in tasks.items() if hasattr(task, "per_category")}
        return TrialResult(metrics, history["step"], net, history, per)

    def delta_m(
        self,
        metrics: Mapping[str, Mapping[str, float]],
        single: Mapping[str, Mapping[str, float]],
        skip_zero: bool = True,
    ) -> float:
        """Delta-m against ``single`` under the recipe's convention (``recipe.gain``); terms whose
        single-task value is 0 are left out."""
        return self.recipe.gain(metrics, single, self.directions(), skip_zero=skip_zero, types=self.types)


@dataclass
class WarmStart:
    """Trained single-task networks as the start of other plans.

    Each column's backbone weights (under timm's names, whatever the plan's cut points) and each
    task's head.
    """

    columns: list[dict[str, torch.Tensor]]
    heads: dict[str, dict[str, torch.Tensor]]

    @classmethod
    def of(cls, net: StitchedNet) -> WarmStart:
        """The warm start a trained single-task net gives: its columns' weights and its heads."""
        heads = {t: {k: v.detach().clone() for k, v in net.heads[t].state_dict().items()} for t in net.tasks}
        return cls(column_weights_of(net), heads)

    def load_heads(self, net: StitchedNet) -> None:
        """Copy the heads in. Sluice head inputs, and the shortcut of a searched warm-started plan
        (``shortcut_init: identity``), start as the identity on the last stage, so the single-task
        head fits them as it is; the official Xavier shortcut of an ``nddr_default`` baseline does not."""
        for t in net.tasks:
            net.heads[t].load_state_dict(self.heads[t])


def _cached(data: Dataset) -> Dataset:
    """``data`` behind a memory cache when its items are a pure function of the index (no random
    augmentation): every trial of a study reads the same items, so they are read or generated once."""
    pure = getattr(data, "deterministic", False) or getattr(data, "augment", True) is False
    return _Cached(data) if pure else data


class _Cached(Dataset):
    """Keeps what it has read in memory up to ``limit`` bytes: a study reads the same items in every
    trial (the validation set at every evaluation), and generating or decoding them again costs
    more than the forward pass of a small net."""

    def __init__(self, data: Dataset, limit: int = 1 << 29) -> None:
        self.data, self.limit, self.size = data, limit, 0
        self.items: dict[int, Any] = {}
        self.item_bytes = 0  # of the first item read

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # tasks, classes, ... of the wrapped set
        if name in ("data", "items", "limit", "size", "item_bytes"):
            raise AttributeError(name)
        return getattr(self.data, name)

    @property
    def in_memory(self) -> bool:
        """Whether the whole set fits the cache (judged by its first item's size): then the
        training's loader reads it in the main process (``train.loader_workers``), and worker
        processes, each with a cache of its own, would only copy it. NYUv2's validation split at
        288 x 384 (654 items of 4 MiB) does not fit, and is decoded by loader workers instead."""
        if not self.item_bytes and len(self):
            self[0]
        return self.item_bytes * len(self) <= self.limit

    def __getitem__(self, i: int) -> Any:
        if i in self.items:
            return self.items[i]
        item = self.data[i]
        n = sum(v.numel() * v.element_size() for v in item.values() if isinstance(v, torch.Tensor))
        self.item_bytes = self.item_bytes or n
        if self.size + n <= self.limit:
            self.items[i] = item
            self.size += n
        return item


def column_weights_of(net: StitchedNet) -> list[dict[str, torch.Tensor]]:
    """Each task column's backbone weights under timm's names: the start of NDDR-CNN Table 3's
    "single-task initialisation" when ``net`` is the trained single-task baseline."""
    out = []
    for t in range(len(net.tasks)):
        sd: dict[str, torch.Tensor] = {}
        segments: list[Any] = [*net.shared, *net.columns[t]]
        for seg in segments:
            for graph in (seg.eval_graph, seg.train_graph):
                if graph is not None:
                    sd.update({k: v.detach().clone() for k, v in graph.state_dict().items()})
        out.append(sd)
    return out


def _takes(fn: Any, name: str) -> bool:
    """Whether a data set's constructor (or ``tasks_for``) has a parameter ``name``."""
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _head_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """Task arguments that shape the head (``loss_weight`` changes only the loss)."""
    return {k: v for k, v in args.items() if k != "loss_weight"}


def check_metrics(metrics: Any, directions: Mapping[str, Mapping[str, bool]], source: str) -> None:
    """A baseline file must hold every metric of every task."""
    for t, ms in directions.items():
        for m in ms:
            if not isinstance(metrics, Mapping) or not isinstance(metrics.get(t), Mapping) or m not in metrics[t]:
                raise FusionSearchError(f"{source} lacks {t}/{m}: it is not a metrics file of these tasks")
            if not finite(metrics[t][m]):
                raise FusionSearchError(f"{source}: {t}/{m} must be a finite number, got {metrics[t][m]!r}")
