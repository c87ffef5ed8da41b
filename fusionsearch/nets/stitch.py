"""Stitched multi-task networks: K columns of backbone segments with fusion units between them.

A forward pass runs segment s of every column, then the unit at the cut point that ends segment
s (if any), then segment s+1, ... . Columns are deep copies of the traced backbone's segments (or
of different backbones whose resolutions match); a shared prefix is one trunk that all tasks use
before the columns begin (the cross-stitch paper's "split" architectures).
"""

from __future__ import annotations

import contextlib
import copy
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from fusionsearch.errors import CheckpointError, PlanError
from fusionsearch.graph.cuts import BackboneGraph, trace
from fusionsearch.graph.layouts import is_tokens
from fusionsearch.graph.points import CutPoint
from fusionsearch.graph.segments import Segment
from fusionsearch.nets.fusion import FusionUnit, ShortcutHead, get_fusion
from fusionsearch.nets.heads import LayoutAdapter, SimpleHead, task_kind
from fusionsearch.schema import did_you_mean

__all__ = ["StitchPlan", "StitchedNet", "StitchMeta", "build", "save", "load", "parse_tasks", "SAFE_CREATE_KWARGS"]

FORMAT = "fusionsearch.stitched"
FORMAT_VERSION = 2  # 2: the shortcut became conv-BN-ReLU (version 1 files load with the old one)


@dataclass
class StitchPlan:
    """Where fusion goes and what it is.

    Args:
        at: cut points (boundary names, module paths or node names) that get a fusion unit; for
            columns of different backbones an entry may list one name per column.
        unit: the registered unit used at every point (``nddr``, ``cross_stitch``, ``sluice``).
        unit_args: keyword arguments of that unit (``init``, ``lr_mult``, ``weight_decay``, ...).
        per_point: overrides for single points: ``{"layer3": {"unit": "cross_stitch", ...}}``.
        shared_prefix: a cut point up to which all tasks share one trunk (None: K full columns).
        shortcut: NDDR-Shortcut head inputs (every fusion output resized, concatenated, 1x1 conv).
        shortcut_channels: channels of the shortcut's output (default: the last stage's).
        shortcut_init: ``xavier`` (the official conv-BN-ReLU) or ``identity`` (a bare 1x1 conv
            that starts as the identity: the net reproduces the backbone at init).
        shortcut_resize: ``tf_legacy`` (the official code's TF 1.4 resize), ``align_corners``
            (the PyTorch port's) or ``half_pixel`` (torch's default).
        head_input_lr_mult: the learning-rate multiplier of the head inputs (the shortcut, or
            sluice's beta mix); None: the main unit's ``lr_mult`` when the plan names one (the
            official code's one ``--nddr-mult``), else the optimiser's default for that module
            (``conventions.fusion_lr_mult("shortcut" | "sluice_beta", optimizer)``).
    """

    at: list[Any] = field(default_factory=list)
    unit: str = "nddr"
    unit_args: dict[str, Any] = field(default_factory=dict)
    per_point: dict[str, dict[str, Any]] = field(default_factory=dict)
    shared_prefix: str | None = None
    shortcut: bool = False
    shortcut_channels: int | None = None
    shortcut_init: str = "xavier"
    shortcut_resize: str = "tf_legacy"
    head_input_lr_mult: float | None = None

    def unit_for(self, point: str) -> tuple[str, dict[str, Any]]:
        args = dict(self.unit_args)
        override = dict(self.per_point.get(point, {}))
        name = override.pop("unit", self.unit)
        if name != self.unit:
            args = {}
        args.update(override)
        if "init" in args and isinstance(args["init"], list):
            args["init"] = tuple(args["init"])
        return name, args

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StitchPlan:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            hint = did_you_mean(sorted(unknown)[0], list(cls.__dataclass_fields__))
            raise PlanError(f"unknown StitchPlan field(s): {', '.join(sorted(unknown))}{hint}")
        kwargs: dict[str, Any] = {k: (list(v) if k == "at" else v) for k, v in d.items()}
        return cls(**kwargs)


@dataclass
class StitchMeta:
    """What a stitched net remembers of how it was built (``save`` writes it, ``load`` reads it)."""

    backbones: list[str]  # timm names, or the modules' class names
    backbone_is_module: list[bool]  # built from an nn.Module: ``load`` needs it again
    input_size: list[int]  # (C, H, W) the graph was traced at
    create_kwargs: dict[str, Any]  # timm.create_model arguments
    leaf: list[str]  # tracer leaves given by name
    last_fusion_is_output: bool  # the last unit sits at the backbone's output
    column_params: int  # parameters of one column (the single backbone)
    task_args: dict[str, dict[str, Any]]


def parse_tasks(tasks: Mapping[str, int] | Sequence[str] | str) -> dict[str, int]:
    """``{"seg": 40, "normal": 3}``, ``["seg:40", "normal:3"]`` or ``"seg:40,normal:3"``."""
    out: dict[str, int] = {}
    if isinstance(tasks, Mapping):
        out = {str(k): int(v) for k, v in tasks.items()}
    else:
        items = tasks.split(",") if isinstance(tasks, str) else list(tasks)
        for item in items:
            name, sep, size = item.strip().partition(":")
            if not sep or not size.strip().isdigit():
                raise PlanError(f"task {item!r} needs its output size, e.g. seg:40 or normal:3")
            if name in out:
                raise PlanError(f"task {name!r} is named more than once: each task is one column")
            out[name] = int(size)
    if len(out) < 1:
        raise PlanError("at least one task is needed")
    for name, n in out.items():
        if n < 1:
            raise PlanError(f"task {name!r} needs a positive output size, got {n}")
    return out


class StitchedNet(nn.Module):
    """K task columns with fusion units; ``forward(x)`` returns ``{task: prediction}``."""

    def __init__(
        self,
        tasks: dict[str, int],
        plan: StitchPlan,
        points: list[CutPoint],
        shared: nn.ModuleList,
        columns: nn.ModuleList,
        units: nn.ModuleDict,
        head_inputs: nn.ModuleList | None,
        heads: nn.ModuleDict,
        meta: StitchMeta,
    ) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        self.plan = plan
        self.points = points
        # typed as what they hold (nn.ModuleList's items are plain Modules to a type checker)
        self.shared: Any
        self.columns: Any
        self.units: Any
        self.shared = shared
        self.columns = columns
        self.units = units
        self.head_inputs = head_inputs
        self.heads = heads
        self.meta = meta
        # the columns hold trained single-task weights and every unit is new (``build`` with
        # column_weights): ``bn_init: auto`` then calibrates the units' BatchNorm (``calibration``)
        self.columns_trained = False

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def _features(self, x: Tensor) -> tuple[list[Tensor], list[list[Tensor]], Tensor]:
        """Last-stage features per task, every fusion output per task, and the units' extra loss."""
        k = len(self.tasks)
        extra = x.new_zeros(())
        h, side = x, ()
        n_shared = len(self.shared)
        for seg in self.shared:
            h, side = seg.step(h, side)
        feats, sides = [h] * k, [side] * k
        fused: list[list[Tensor]] = [[] for _ in range(k)]
        for j in range(len(self.columns[0])):
            for t in range(k):
                feats[t], sides[t] = self.columns[t][j].step(feats[t], sides[t])
            key = str(n_shared + j)
            if key in self.units:
                feats, e = self.units[key](feats)
                if e is not None:
                    extra = extra + e
                for t in range(k):
                    fused[t].append(feats[t])
        return feats, fused, extra

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Each task's last-stage features (after the last fusion unit, before any head input)."""
        return self._features(x)[0]

    def head_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """What each task's head receives (shortcut / sluice mixing applied) and the extra loss."""
        feats, fused, extra = self._features(x)
        if self.head_inputs is None:
            return feats, extra
        ends_at_output = self.meta.last_fusion_is_output
        outs = [m(f if ends_at_output else [*f, last]) for m, f, last in zip(self.head_inputs, fused, feats)]
        return outs, extra

    def forward(self, x: Tensor, return_extra: bool = False) -> Any:
        feats, extra = self.head_features(x)
        size = (x.shape[-2], x.shape[-1])
        preds = {t: self.heads[t](f, size) for t, f in zip(self.tasks, feats)}
        return (preds, extra) if return_extra else preds

    def fusion_units(self) -> dict[str, FusionUnit]:
        """The units by cut point name."""
        names = [p.name for p in self.points]
        return {names[int(k)]: u for k, u in self.units.items()}

    def backbone_parameters(self) -> list[nn.Parameter]:
        return _unique([*self.shared.parameters(), *self.columns.parameters()])

    def fusion_parameters(self) -> list[nn.Parameter]:
        extra = list(self.head_inputs.parameters()) if self.head_inputs is not None else []
        return _unique([*self.units.parameters(), *extra])

    def param_groups(
        self, base_lr: float, weight_decay: float = 0.0, head_lr_mult: float = 1.0, optimizer: str = "sgd"
    ) -> list[dict[str, Any]]:
        """Optimizer groups: backbone (base lr), each fusion group (lr x its multiplier, its own
        weight decay), shortcut/sluice head inputs, heads (lr x ``head_lr_mult``). Every
        trainable parameter is in exactly one group; each group has a ``name``. A fusion group
        whose plan named no multiplier gets ``conventions.fusion_lr_mult(..., optimizer)``: the
        papers' x100 under SGD, its translation under AdamW."""
        from fusionsearch.nets.conventions import fusion_lr_mult

        def mult_of(value: float | None, component: str, sgd_default: float = 100.0) -> float:
            return float(value) if value is not None else fusion_lr_mult(component, optimizer, sgd_default)

        groups: list[dict[str, Any]] = [
            {
                "name": "backbone",
                "params": self.backbone_parameters(),
                "lr": base_lr,
                "weight_decay": weight_decay,
            }
        ]
        for point, unit in self.fusion_units().items():
            for g in unit.param_groups():
                if g["params"]:
                    wd = weight_decay if g["weight_decay"] is None else g["weight_decay"]
                    mult = mult_of(g["lr_mult"], unit.unit_name, type(unit).default_lr_mult)
                    groups.append(
                        {
                            "name": f"fusion:{point}:{g['tag']}",
                            "params": g["params"],
                            "lr": base_lr * mult,
                            "lr_mult": mult,
                            "weight_decay": wd,
                        }
                    )
        if self.head_inputs is not None:
            head_inputs: list[Any] = list(self.head_inputs)
            for task, m in zip(self.tasks, head_inputs):
                component = str(getattr(m, "lr_component", self.plan.unit))
                if hasattr(m, "param_groups"):  # the shortcut: in the fusion lr group, BN undecayed
                    for g in m.param_groups():
                        if g["params"]:
                            mult = mult_of(g["lr_mult"], component)
                            groups.append(
                                {
                                    "name": f"head_input:{task}:{g['tag']}",
                                    "params": g["params"],
                                    "lr": base_lr * mult,
                                    "lr_mult": mult,
                                    "weight_decay": weight_decay if g["weight_decay"] is None else g["weight_decay"],
                                }
                            )
                    continue
                mult = mult_of(getattr(m, "lr_mult", None), component)
                groups.append(
                    {
                        "name": f"head_input:{task}",
                        "params": [p for p in m.parameters() if p.requires_grad],
                        "lr": base_lr * mult,
                        "lr_mult": mult,
                        "weight_decay": weight_decay,
                    }
                )
        groups.append(
            {
                "name": "heads",
                "params": [p for p in self.heads.parameters() if p.requires_grad],
                "lr": base_lr * head_lr_mult,
                "weight_decay": weight_decay,
            }
        )
        seen = [id(p) for g in groups for p in g["params"]]
        assert len(seen) == len(set(seen)), "a parameter is in two groups"
        return groups

    def describe(self) -> dict[str, Any]:
        """Plan, backbones and parameter counts (what ``inspect --model`` prints)."""
        count = lambda ps: sum(p.numel() for p in ps)
        return {
            "backbones": self.meta.backbones,
            "tasks": dict(self.tasks),
            "plan": self.plan.to_dict(),
            "points": [
                {"name": p.name, "shape": list(p.shape), "layout": p.layout, "unit": self._unit_name(i)}
                for i, p in enumerate(self.points)
            ],
            "params": {
                "total": count(self.parameters()),
                "backbone": count(self.backbone_parameters()),
                "fusion": count(self.fusion_parameters()),
                "heads": count(self.heads.parameters()),
                "single_column": self.meta.column_params,
            },
        }

    def _unit_name(self, i: int) -> str | None:
        unit = self.units[str(i)] if str(i) in self.units else None  # noqa: SIM401 - ModuleDict has no get
        return None if unit is None else unit.unit_name


def _unique(params: list[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen and p.requires_grad:
            seen.add(id(p))
            out.append(p)
    return out


def _graphs_for(
    backbone: str | nn.Module | Sequence[str | nn.Module],
    k: int,
    input_size: Sequence[int] | None,
    leaf: Sequence[Any],
    pretrained: bool,
    create_kwargs: dict[str, Any],
) -> tuple[list[BackboneGraph], list[str | None]]:
    specs: list[Any] = list(backbone) if isinstance(backbone, (list, tuple)) else [backbone] * k
    if len(specs) != k:
        raise PlanError(f"{len(specs)} backbones given for {k} tasks: give one, or one per task")
    cache: dict[int | str, BackboneGraph] = {}
    graphs = []
    for spec in specs:
        key: int | str = spec if isinstance(spec, str) else id(spec)
        if key not in cache:
            cache[key] = trace(spec, input_size, leaf=leaf, pretrained=pretrained, **create_kwargs)
        graphs.append(cache[key])
    names = [s if isinstance(s, str) else None for s in specs]
    return graphs, names


def _check_points(graphs: list[BackboneGraph], names: Sequence[Any]) -> list[list[CutPoint]]:
    """Resolve ``names`` in every column, in column 0's order, and check they line up."""
    per_col = [[g.resolve(n if isinstance(n, str) else n[c]) for n in names] for c, g in enumerate(graphs)]
    order = sorted(range(len(names)), key=lambda i: per_col[0][i].index)
    per_col = [[col[i] for i in order] for col in per_col]
    for c, col in enumerate(per_col[1:], start=1):
        if [p.index for p in col] != sorted(p.index for p in col):
            raise PlanError(f"cut points {names} come in a different order in column {c} ({graphs[c].name})")
        for a, b in zip(per_col[0], col):
            if a.spatial != b.spatial or is_tokens(a.layout) != is_tokens(b.layout):
                raise PlanError(
                    f"incompatible resolutions at {a.name!r}: {graphs[0].name} has {a.layout} {a.shape},"
                    f" {graphs[c].name} has {b.layout} {b.shape} at {b.name!r}; fusion needs equal sizes"
                )
    return per_col


def build(
    backbone: str | nn.Module | Sequence[str | nn.Module],
    tasks: Mapping[str, int] | Sequence[str] | str,
    plan: StitchPlan | None = None,
    *,
    input_size: Sequence[int] | None = None,
    column_weights: Sequence[str | os.PathLike[str] | Mapping[str, Tensor] | None] | None = None,
    leaf: Sequence[Any] = (),
    pretrained: bool = False,
    task_args: Mapping[str, Mapping[str, Any]] | None = None,
    init_seed: int | None = None,
    **create_kwargs: Any,
) -> StitchedNet:
    """Build a stitched multi-task network.

    Args:
        backbone: a timm name, an ``nn.Module`` (copied with its weights into every column), or a
            list with one per task (columns of different backbones must match in resolution).
        tasks: task name -> output size (``{"seg": 40, "normal": 3}`` or ``"seg:40,normal:3"``).
        plan: where fusion goes; default ``StitchPlan()``: no fusion, K single-task networks.
        input_size: (C, H, W) for tracing (default: the backbone's own).
        column_weights: per task, a checkpoint path or state dict of that task's single-task
            backbone (the papers' best start, NDDR-CNN Table 3), or None to keep the weights. With a
            ``shared_prefix`` the trunk starts from the first task's weights.
        leaf, pretrained, create_kwargs: passed to ``trace`` / ``timm.create_model``.
        task_args: per task, constructor arguments of its registered ``Task`` that shape the head
            (e.g. ``{"seg": {"rates": [1, 6]}}``). Registered tasks get their own head (ASPP for
            ``seg``); other names get ``SimpleHead``.
        init_seed: seeds each new module (fusion unit, head input, head) from this number and its
            own name, so that two plans that share a module start it identically whatever else
            they hold (common random numbers: their difference is the plan's, not the draw's).

    Example:
        >>> net = build("test_resnet", {"seg": 5, "normal": 3}, StitchPlan(at=["layer1", "layer2"]))
        >>> sorted(net(torch.randn(1, 3, 64, 64)))
        ['normal', 'seg']
    """
    plan = plan or StitchPlan()
    task_sizes = parse_tasks(tasks)
    k = len(task_sizes)
    graphs, names = _graphs_for(backbone, k, input_size, leaf, pretrained, create_kwargs)
    fusion_names, per_col = _resolve_points(plan, graphs, k)
    by_node = {p.node: p for p in per_col[0]}
    points = sorted(by_node.values(), key=lambda p: p.index)
    fusion_nodes = {p.node for p in per_col[0] if _name_of(p, fusion_names)}
    n_shared = _shared_count(plan, graphs, points, by_node, fusion_nodes)
    col_points = [sorted(per_col[c], key=lambda p: p.index) for c in range(k)]
    columns_segments = [_segments(graphs[c], col_points[c]) for c in range(k)]
    if column_weights is not None:
        if len(column_weights) != k:
            raise PlanError(f"{len(column_weights)} column weights given for {k} tasks")
        for c, w in enumerate(column_weights):
            if w is not None:
                _load_column(columns_segments[c], w, list(task_sizes)[c])
    shared = nn.ModuleList(columns_segments[0][:n_shared])
    columns = nn.ModuleList(nn.ModuleList(segs[n_shared:]) for segs in columns_segments)
    units, unit_channels = _units(plan, points, col_points, fusion_nodes, fusion_names, init_seed)
    finals = [_final_point(g) for g in graphs]
    last_is_output = bool(units) and points[max(int(i) for i in units)].node == finals[0].node
    head_inputs, in_channels = _head_inputs(plan, unit_channels, finals, last_is_output, init_seed)
    prefixes = [int(getattr(g.model, "num_prefix_tokens", 0) or 0) for g in graphs]
    heads = nn.ModuleDict()
    for t, (task, size) in enumerate(task_sizes.items()):
        with _seeded(init_seed, f"head:{task}"):
            heads[task] = make_head(
                task, size, in_channels[t], finals[t].layout, prefixes[t], (task_args or {}).get(task, {})
            )
    meta = StitchMeta(
        backbones=[n if n is not None else g.name for n, g in zip(names, graphs)],
        backbone_is_module=[n is None for n in names],
        input_size=list(graphs[0].input_size),
        create_kwargs=dict(create_kwargs),
        leaf=[x for x in leaf if isinstance(x, str)],
        last_fusion_is_output=last_is_output,
        column_params=graphs[0].num_params,
        task_args={t: dict(a) for t, a in (task_args or {}).items()},
    )
    net = StitchedNet(task_sizes, plan, points, shared, columns, units, head_inputs, heads, meta)
    net.columns_trained = column_weights is not None and any(w is not None for w in column_weights)
    return net


def _resolve_points(plan: StitchPlan, graphs: list[BackboneGraph], k: int) -> tuple[list[Any], list[list[CutPoint]]]:
    """The plan's fusion point names (a name, or one per column) and every named point resolved
    in each column, the shared prefix's included."""
    for name in plan.per_point:
        if name not in plan.at:
            raise PlanError(f"per_point names {name!r}, which is not in at={plan.at}")
    fusion_names = list(dict.fromkeys(n if isinstance(n, str) else tuple(n) for n in plan.at))
    for n in fusion_names:
        if not isinstance(n, str) and len(n) != k:
            raise PlanError(f"fusion point {list(n)} names {len(n)} cut points for {k} columns")
    all_names = fusion_names + ([plan.shared_prefix] if plan.shared_prefix else [])
    return fusion_names, _check_points(graphs, all_names)


def _shared_count(
    plan: StitchPlan,
    graphs: list[BackboneGraph],
    points: list[CutPoint],
    by_node: Mapping[str, CutPoint],
    fusion_nodes: set[str],
) -> int:
    """How many segments the tasks share (the trunk up to ``shared_prefix``); 0 without one."""
    if not plan.shared_prefix:
        return 0
    if len({id(g) for g in graphs}) != 1:
        raise PlanError("shared_prefix needs the same backbone in every column")
    prefix = graphs[0].resolve(plan.shared_prefix)
    late = [p.name for p in points if p.node in fusion_nodes and p.index <= prefix.index]
    if late:
        raise PlanError(
            f"shared_prefix {plan.shared_prefix!r} comes after (or at) fusion point(s) {late}: the columns"
            " are one trunk there, so there is nothing to fuse; move the prefix earlier or drop those points"
        )
    return points.index(by_node[prefix.node]) + 1


def _units(
    plan: StitchPlan,
    points: list[CutPoint],
    col_points: list[list[CutPoint]],
    fusion_nodes: set[str],
    fusion_names: list[Any],
    init_seed: int | None,
) -> tuple[nn.ModuleDict, list[list[int]]]:
    """One unit per fusion point (keyed by the point's position), built to the ``FusionUnit``
    contract, and each unit's per-task channels."""
    units = nn.ModuleDict()
    unit_channels: list[list[int]] = []
    for i, p in enumerate(points):
        if p.node not in fusion_nodes:
            continue
        label = _name_of(p, fusion_names)
        unit_name, args = plan.unit_for(label)
        cls = get_fusion(unit_name)
        chans = [cols[i].channels for cols in col_points]
        nonneg = all(cols[i].nonnegative for cols in col_points)
        try:
            with _seeded(init_seed, f"unit:{label}"):
                units[str(i)] = cls(chans, p.layout, nonnegative=nonneg, **args)
        except TypeError as e:
            raise PlanError(f"bad arguments for fusion unit {unit_name!r} at {label!r}: {e}") from None
        unit_channels.append(chans)
    return units, unit_channels


def make_head(
    task: str, out: int, in_channels: int, layout: str, prefix_tokens: int = 0, args: Mapping[str, Any] | None = None
) -> nn.Module:
    """The registered task's own head behind a layout adapter, or ``SimpleHead`` for other names."""
    from fusionsearch.tasks.task import TASKS, get_task

    base = task.split(":")[0]
    if base not in TASKS:
        return SimpleHead(in_channels, out, task_kind(task), layout, prefix_tokens)
    spec = get_task(base, out_channels=out, **dict(args or {}))
    return LayoutAdapter(spec.head(in_channels), spec.kind, layout, prefix_tokens)


def _name_of(p: CutPoint, names: list[Any]) -> str:
    for n in names:
        first = n if isinstance(n, str) else n[0]
        if first in (p.name, p.node, *p.aliases):
            return first
    return ""


def _final_point(g: BackboneGraph) -> CutPoint:
    last = g.cut_points[-1] if g.cut_points else None
    sink = g._eval_index.sink if g._eval_index is not None else None
    if last is None or sink is None or last.node != sink.name:
        raise PlanError(f"{g.name}'s forward_features does not return one tensor; it cannot be stitched")
    return last


@contextlib.contextmanager
def _seeded(seed: int | None, name: str) -> Iterator[None]:
    """Draw a module's initial weights from (seed, name) and leave the global generator as it was."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
        yield


def _head_inputs(
    plan: StitchPlan,
    unit_channels: list[list[int]],
    finals: list[CutPoint],
    last_is_output: bool,
    init_seed: int | None,
) -> tuple[nn.ModuleList | None, list[int]]:
    """Per task, the module that makes its head's input from its fusion outputs: the shortcut,
    else the main unit's ``head_input`` hook (sluice's beta mix), else none (the last stage)."""
    in_channels = [f.channels for f in finals]
    if plan.shortcut and not unit_channels:
        raise PlanError("shortcut needs at least one fusion point")
    if not unit_channels:
        return None, in_channels
    cls = get_fusion(plan.unit)
    # None: the optimiser's default for the module (``StitchedNet.param_groups`` resolves it)
    lr = plan.head_input_lr_mult if plan.head_input_lr_mult is not None else plan.unit_args.get("lr_mult")
    lr_mult = None if lr is None else float(lr)
    mods: list[nn.Module] = []
    for t, final in enumerate(finals):
        chans = [ch[t] for ch in unit_channels] + ([] if last_is_output else [final.channels])
        with _seeded(init_seed, f"head_input:{t}"):
            if plan.shortcut:
                out = plan.shortcut_channels or final.channels
                mods.append(
                    ShortcutHead(
                        chans,
                        out,
                        final.layout,
                        lr_mult=lr_mult,
                        init=plan.shortcut_init,
                        resize=plan.shortcut_resize,
                        weight_decay=plan.unit_args.get("weight_decay"),
                    )
                )
                in_channels[t] = out
                continue
            mod = cls.head_input(chans, final.layout, lr_mult)
            if mod is None:
                return None, in_channels
            mods.append(mod)
    return nn.ModuleList(mods), in_channels


def _segments(g: BackboneGraph, points: list[CutPoint]) -> list[Segment]:
    return copy.deepcopy(g.split(points))


def _load_column(segments: list[Segment], weights: Any, task: str) -> None:
    """Load a single-task backbone's weights into one column (keys as in the timm model)."""
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"column weights for task {task!r}: {str(path)!r} does not exist")
        try:  # timm's reader: plain, "state_dict"/"model"-keyed, "module." prefixes, weights only
            sd = timm.models.load_state_dict(str(path), use_ema=False, device="cpu", weights_only=True)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"column weights for task {task!r}: {str(path)!r} cannot be read: {first}") from None
    else:
        sd = dict(weights)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    missing = []
    with torch.no_grad():
        for seg in segments:
            for graph in (seg.eval_graph, seg.train_graph):
                if graph is None:
                    continue
                for name, t in graph.state_dict(keep_vars=True).items():
                    if name in sd:
                        if sd[name].shape != t.shape:
                            raise PlanError(
                                f"column weights for task {task!r}: {name} has shape {tuple(sd[name].shape)},"
                                f" the backbone needs {tuple(t.shape)}"
                            )
                        t.copy_(sd[name])
                    else:
                        missing.append(name)
    if missing:
        raise PlanError(f"column weights for task {task!r} lack {len(missing)} backbone tensors, e.g. {missing[:3]}")


def save(net: StitchedNet, path: str | os.PathLike[str], weighting: Mapping[str, Any] | None = None) -> None:
    """Save weights, plan, tasks and backbone names; ``load`` rebuilds the net from them.
    ``weighting``: the training's weighting method and its learned state (``fit``'s
    ``history["weighting"]``), kept beside the net (e.g. uncertainty's log-variances)."""
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "tasks": dict(net.tasks),
        "plan": net.plan.to_dict(),
        "backbones": list(net.meta.backbones),
        "backbone_is_module": list(net.meta.backbone_is_module),
        "input_size": list(net.meta.input_size),
        "create_kwargs": dict(net.meta.create_kwargs),
        "leaf": list(net.meta.leaf),
        "task_args": dict(net.meta.task_args),
        "state_dict": net.state_dict(),
    }
    if weighting is not None:
        payload["weighting"] = {"name": str(weighting["name"]), "state_dict": dict(weighting.get("state_dict", {}))}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


# timm.create_model arguments a saved net may carry without ``trust``: shapes and regularisation,
# nothing that names a file, a URL, a hub repository or pretrained weights to fetch
SAFE_CREATE_KWARGS = frozenset(
    {
        "output_stride",
        "img_size",
        "in_chans",
        "patch_size",
        "num_classes",
        "global_pool",
        "drop_rate",
        "drop_path_rate",
        "dynamic_img_size",
        "dynamic_img_pad",
        "class_token",
        "reg_tokens",
        "no_embed_class",
        "window_size",
    }
)


def _plain(value: Any) -> bool:
    """A number, a bool, a short string without a path, or a list of them."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, str):
        return len(value) < 64 and not any(c in value for c in "/\\:")
    return isinstance(value, (int, float, bool)) or value is None


def _check_untrusted(payload: Mapping[str, Any], where: str) -> None:
    """Refuse what a crafted file could use to steer timm (see ``load``)."""
    import timm

    from fusionsearch.errors import UntrustedFileError

    hint = "load it with trust=True (--trust) only if you made the file yourself"
    for name in payload.get("backbones", []):
        if not isinstance(name, str) or not _plain(name) or not timm.is_model(name):
            raise UntrustedFileError(f"{where} names backbone {name!r}, not a plain timm model name: {hint}")
    kwargs = payload.get("create_kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise UntrustedFileError(f"{where} has malformed create_kwargs: {hint}")
    bad = sorted(k for k, v in kwargs.items() if k not in SAFE_CREATE_KWARGS or not _plain(v))
    if bad:
        raise UntrustedFileError(f"{where} asks timm for {', '.join(map(str, bad))}: {hint}")
    size = payload.get("input_size", [])
    if not (
        isinstance(size, (list, tuple)) and len(size) == 3 and all(isinstance(v, int) and 0 < v <= 8192 for v in size)
    ):
        raise UntrustedFileError(
            f"{where} has input size {size!r}: three whole numbers from 1 to 8192 expected: {hint}"
        )


def load(
    path: str | os.PathLike[str],
    backbone: nn.Module | Sequence[nn.Module] | None = None,
    map_location: str | torch.device = "cpu",
    trust: bool = False,
) -> StitchedNet:
    """Rebuild a saved stitched net (read with ``weights_only=True``: no pickled code runs).

    A net built from timm names needs nothing else; one built from ``nn.Module`` backbones needs
    the same module(s) again as ``backbone`` (their weights are overwritten by the saved ones).

    The file says which timm models to create, and a file from elsewhere is not to be trusted
    with that: unless ``trust=True``, only names ``timm.is_model`` knows and the shape arguments
    in ``SAFE_CREATE_KWARGS`` are accepted, and pretrained weights are never fetched (no hub name,
    checkpoint path or ``pretrained_cfg_overlay`` comes from the file).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"stitched network {str(p)!r} does not exist")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated, or a pickle with code in it
        raise PlanError(f"{str(p)!r} cannot be read as a stitched network: {type(e).__name__}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PlanError(f"{str(p)!r} is not a fusionsearch stitched network (no {FORMAT!r} header)")
    if not isinstance(payload.get("version", 0), int) or payload.get("version", 0) > FORMAT_VERSION:
        raise PlanError(f"{str(p)!r} was saved by a newer fusionsearch (format {payload.get('version')!r})")
    missing = [k for k in ("tasks", "plan", "backbones", "input_size", "state_dict") if k not in payload]
    if missing:
        raise PlanError(f"{str(p)!r} is an incomplete stitched network: it lacks {', '.join(missing)}")
    specs: Any = payload["backbones"]
    if any(payload.get("backbone_is_module", [])):
        if backbone is None:
            raise PlanError(
                f"{str(p)!r} was built from nn.Module backbones ({', '.join(map(str, specs))}): pass them again as"
                " load(path, backbone=...)"
            )
        specs = backbone
    elif not trust:
        _check_untrusted(payload, repr(str(p)))
    plan_d = dict(payload["plan"]) if isinstance(payload["plan"], Mapping) else payload["plan"]
    if payload.get("version", 0) < 2 and isinstance(plan_d, dict):  # saved before the official defaults
        plan_d.setdefault("shortcut_init", "identity")
        plan_d.setdefault("shortcut_resize", "half_pixel")
        old_bn = {"bn_momentum": 0.1, "bn_eps": 1e-5}  # torch's, NDDR's before version 2
        if plan_d.get("unit", "nddr") == "nddr":
            plan_d["unit_args"] = {**old_bn, **dict(plan_d.get("unit_args") or {})}
        plan_d["per_point"] = {
            k: ({**old_bn, **v} if v.get("unit", plan_d.get("unit", "nddr")) == "nddr" else v)
            for k, v in dict(plan_d.get("per_point") or {}).items()
        }
    try:
        net = build(
            specs,
            payload["tasks"],
            StitchPlan.from_dict(plan_d),
            input_size=payload["input_size"],
            leaf=payload.get("leaf", []),
            task_args=payload.get("task_args") or None,
            pretrained=False,
            **{k: v for k, v in (payload.get("create_kwargs") or {}).items() if k != "pretrained"},
        )
    except PlanError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise PlanError(f"{str(p)!r} holds a network that cannot be rebuilt: {type(e).__name__}: {e}") from None
    state = payload["state_dict"]
    if not isinstance(state, Mapping):
        raise PlanError(f"{str(p)!r} holds no weights (state_dict is a {type(state).__name__})")
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "mismatch"
        raise PlanError(f"{str(p)!r} holds weights that do not fit its network: {first}") from None
    return net.eval()
