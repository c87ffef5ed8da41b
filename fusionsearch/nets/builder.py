"""The build of a stitched net, in phases: trace the backbones (``_graphs_for``), resolve the plan's
cut points in every column and check they line up (``_resolve_points``), copy each column's
segments and load its single-task weights (``_segments``, ``_load_column``), make the fusion units
(``_units``), the head inputs (``_head_inputs``) and the task heads (``make_head``).

Cut here because building is the one place that turns a plan and backbones into modules: the net
(``net``) needs none of it at run time, and the saved file (``io``) only calls ``build``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
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
from fusionsearch.nets.fusion import get_fusion
from fusionsearch.nets.fusion.shortcut import ShortcutHead
from fusionsearch.nets.heads import LayoutAdapter, SimpleHead, head_kind
from fusionsearch.nets.net import StitchedNet
from fusionsearch.nets.plan import StitchMeta, StitchPlan, parse_tasks

__all__ = ["build"]


Leaf = Sequence[Any] | Mapping[str, Sequence[Any]]


def column_leaves(leaf: Leaf, tasks: Sequence[str]) -> list[list[Any]]:
    """Each column's tracer leaves: one list for every column, or a mapping from a task to its
    column's own (a ResNet and a ConvNeXt column have no module class or path in common, and a
    leaf must name a module of the backbone it is given to)."""
    if not isinstance(leaf, Mapping):
        return [list(leaf) for _ in tasks]
    unknown = [str(t) for t in leaf if t not in tasks]
    if unknown:
        raise PlanError(f"leaf names column {unknown[0]!r}, but the columns are the tasks {', '.join(tasks)}")
    return [list(leaf.get(t, ())) for t in tasks]


def _graphs_for(
    backbone: str | nn.Module | Sequence[str | nn.Module],
    k: int,
    input_size: Sequence[int] | None,
    leaves: list[list[Any]],
    pretrained: bool,
    create_kwargs: dict[str, Any],
) -> tuple[list[BackboneGraph], list[str | None]]:
    specs: list[Any] = list(backbone) if isinstance(backbone, (list, tuple)) else [backbone] * k
    if len(specs) != k:
        raise PlanError(f"{len(specs)} backbones given for {k} tasks: give one, or one per task")
    cache: dict[tuple[Any, ...], BackboneGraph] = {}
    graphs = []
    for spec, leaf in zip(specs, leaves):
        key = (spec if isinstance(spec, str) else id(spec), *(x if isinstance(x, str) else id(x) for x in leaf))
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
    leaf: Leaf = (),
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
        leaf: modules not to trace into (``trace``'s ``leaf``), for every column, or per task
            (``{"seg": ["BasicBlock"], "normal": ["ConvNeXtBlock"]}``) where the backbones differ.
        pretrained: load timm's pretrained weights into each column (passed to ``timm.create_model``).
        **create_kwargs: further arguments of ``timm.create_model``.
        task_args: per task, constructor arguments of its registered ``Task`` that shape the head
            (e.g. ``{"seg": {"rates": [1, 6]}}``). Registered tasks get their own head (ASPP for
            ``seg``); other names get ``SimpleHead``.
        init_seed: seeds each new module (fusion unit, head input, head) from this number and its
            own name, so that two plans that share a module start it identically whatever else
            they hold (common random numbers: their difference is the plan's, not the draw's).

    Examples:
        >>> net = build("test_resnet", {"seg": 5, "normal": 3}, StitchPlan(at=["layer1", "layer2"]))
        >>> sorted(net(torch.randn(1, 3, 64, 64)))
        ['normal', 'seg']
    """
    plan = plan or StitchPlan()
    task_sizes = parse_tasks(tasks)
    k = len(task_sizes)
    leaves = column_leaves(leaf, list(task_sizes))
    graphs, names = _graphs_for(backbone, k, input_size, leaves, pretrained, create_kwargs)
    fusion_names, points, col_points, fusion_nodes, n_shared = _place_points(plan, graphs, k)
    columns_segments = [_segments(graphs[c], col_points[c]) for c in range(k)]
    if column_weights is not None:
        _load_columns(columns_segments, column_weights, list(task_sizes))
    shared = nn.ModuleList(columns_segments[0][:n_shared])
    columns = nn.ModuleList(nn.ModuleList(segs[n_shared:]) for segs in columns_segments)
    units, unit_channels = _units(plan, points, col_points, fusion_nodes, fusion_names, init_seed)
    finals = [_final_point(g) for g in graphs]
    last_is_output = bool(units) and points[max(int(i) for i in units)].node == finals[0].node
    head_inputs, in_channels = _head_inputs(plan, unit_channels, finals, last_is_output, init_seed)
    heads = _heads(task_sizes, in_channels, graphs, finals, task_args, init_seed)
    meta = _meta(graphs, names, create_kwargs, leaf, last_is_output, task_args)
    net = StitchedNet(task_sizes, plan, points, shared, columns, units, head_inputs, heads, meta)
    net.columns_trained = column_weights is not None and any(w is not None for w in column_weights)
    return net


def _load_columns(
    columns_segments: list[list[Segment]],
    column_weights: Sequence[str | os.PathLike[str] | Mapping[str, Tensor] | None],
    task_names: list[str],
) -> None:
    """Each task's single-task backbone weights into its column (None: keep the column's)."""
    k = len(task_names)
    if len(column_weights) != k:
        raise PlanError(f"{len(column_weights)} column weights given for {k} tasks")
    for c, w in enumerate(column_weights):
        if w is not None:
            _load_column(columns_segments[c], w, task_names[c])


def _heads(
    task_sizes: dict[str, int],
    in_channels: list[int],
    graphs: list[BackboneGraph],
    finals: list[CutPoint],
    task_args: Mapping[str, Mapping[str, Any]] | None,
    init_seed: int | None,
) -> nn.ModuleDict:
    """Each task's head on its head input's channels, seeded by the task's name."""
    prefixes = [int(getattr(g.model, "num_prefix_tokens", 0) or 0) for g in graphs]
    heads = nn.ModuleDict()
    for t, (task, size) in enumerate(task_sizes.items()):
        with _seeded(init_seed, f"head:{task}"):
            heads[task] = make_head(
                task, size, in_channels[t], finals[t].layout, prefixes[t], (task_args or {}).get(task, {})
            )
    return heads


def _meta(
    graphs: list[BackboneGraph],
    names: list[str | None],
    create_kwargs: dict[str, Any],
    leaf: Leaf,
    last_is_output: bool,
    task_args: Mapping[str, Mapping[str, Any]] | None,
) -> StitchMeta:
    """What the net remembers of its build, for ``save`` (modules by their class names)."""
    return StitchMeta(
        backbones=[n if n is not None else g.name for n, g in zip(names, graphs)],
        backbone_is_module=[n is None for n in names],
        input_size=list(graphs[0].input_size),
        create_kwargs=dict(create_kwargs),
        leaf=_named(leaf),
        last_fusion_is_output=last_is_output,
        column_params=graphs[0].num_params,
        task_args={t: dict(a) for t, a in (task_args or {}).items()},
    )


def _named(leaf: Leaf) -> list[str] | dict[str, list[str]]:
    """The leaves given by name, which a saved net can name again (classes cannot be saved)."""
    if isinstance(leaf, Mapping):
        return {t: [x for x in v if isinstance(x, str)] for t, v in leaf.items()}
    return [x for x in leaf if isinstance(x, str)]


def _place_points(
    plan: StitchPlan, graphs: list[BackboneGraph], k: int
) -> tuple[list[Any], list[CutPoint], list[list[CutPoint]], set[str], int]:
    """Where the plan falls in the columns: its fusion point names, column 0's points in order,
    each column's points in order, the fusion points' nodes and how many segments are shared."""
    fusion_names, per_col = _resolve_points(plan, graphs, k)
    by_node = {p.node: p for p in per_col[0]}
    points = sorted(by_node.values(), key=lambda p: p.index)
    fusion_nodes = {p.node for p in per_col[0] if _name_of(p, fusion_names)}
    n_shared = _shared_count(plan, graphs, points, by_node, fusion_nodes)
    col_points = [sorted(per_col[c], key=lambda p: p.index) for c in range(k)]
    return fusion_names, points, col_points, fusion_nodes, n_shared


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
    """The task's own head behind a layout adapter: the registered task of its name, or of the
    type its arguments name (``{"task": "cls"}``: a column named ``quality`` that is a classification);
    ``SimpleHead`` for a name the registry doesn't know (its arguments may name its ``label`` kind)."""
    from fusionsearch.tasks.task import TASKS, get_task

    own = dict(args or {})
    base = own.pop("task", task.split(":")[0])
    if base not in TASKS:
        return SimpleHead(in_channels, out, head_kind(own.get("label")), layout, prefix_tokens)
    spec = get_task(base, out_channels=out, **own)
    return LayoutAdapter(spec.head(in_channels), spec.head_kind, layout, prefix_tokens)


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
