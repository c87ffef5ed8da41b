"""The backbone graph: trace any timm backbone, find where it can be cut, split it exactly.

``trace`` turns a model into a :class:`BackboneGraph`. Its cut points are the nodes that carry
one tensor and that every input-to-output path crosses (dominators of the output, ignoring edges
that only carry sizes); its boundaries are the stage outputs among them, named as timm's
``feature_info`` names them where it can. ``split`` cuts the graph at any cut points into
segments whose chained output equals the model's ``forward_features`` bit for bit.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from timm.layers import DropBlock2d, DropPath
from torch import fx, nn

from fusionsearch.errors import ArgumentError, CutPointError, FusionSearchWarning, TraceError
from fusionsearch.graph._fx import (
    BackboneTracer,
    concrete_defaults,
    first_tensor_mismatch,
    inline_constant_placeholders,
    record_values,
)
from fusionsearch.graph.backbone import create_backbone, example_input, input_size_of
from fusionsearch.graph.layouts import Layout, channels_of, is_map, is_tokens, spatial_of
from fusionsearch.graph.segments import GraphIndex, Segment
from fusionsearch.schema import did_you_mean

__all__ = ["BackboneGraph", "Boundary", "CutPoint", "trace"]

# Modules whose Python code branches on self.training: as leaves they keep one graph for both
# modes and decide at run time, as the eager model does.
STOCHASTIC_LEAVES: tuple[type[nn.Module] | str, ...] = (
    DropPath,
    DropBlock2d,
    "DropPath",
    "StochasticDepth",
)


@dataclass(frozen=True)
class CutPoint:
    """A place where the backbone can be cut: one tensor that every path goes through.

    ``shape`` excludes the batch; ``channels`` is the feature axis' size for the ``layout``
    (``NCHW``, ``NHWC``, ``NLC`` for tokens, ``NCL``, ``NC``); ``reduction`` is input size over
    feature size (None where that has no meaning); ``nonnegative`` says the values were all >= 0
    on the example input (the output of a ReLU or a max-pool after one), which fusion units read to
    decide whether a ReLU keeps their identity init an identity.
    """

    name: str
    node: str
    index: int
    shape: tuple[int, ...]
    layout: str
    channels: int
    reduction: int | None
    nonnegative: bool
    params_before: int
    aliases: tuple[str, ...] = ()

    @property
    def spatial(self) -> tuple[int, ...]:
        """The resolution key: (H, W) for maps, (N,) for tokens, () for vectors."""
        return spatial_of(tuple(self.shape), self.layout)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Boundary(CutPoint):
    """A stage boundary: the last cut point of a stage (``kind="end"``), or, for the VGG paper's
    pool1..pool5 placement, the first cut point after a downsampling (``kind="start"``)."""

    stage: int = 0
    kind: str = "end"


@dataclass
class BackboneGraph:
    """A traced backbone: the graph, its cut points and stage boundaries, and ``split``."""

    name: str
    model: nn.Module
    module: fx.GraphModule
    input_size: tuple[int, int, int]
    cut_points: list[CutPoint]
    boundaries: list[Boundary]
    stage_starts: list[Boundary]
    train_module: fx.GraphModule | None = None
    uncut_resolutions: list[tuple[int, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _eval_index: GraphIndex | None = field(default=None, repr=False)
    _train_index: GraphIndex | None = field(default=None, repr=False)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @property
    def train_graph_differs(self) -> bool:
        return self.train_module is not None

    def resolve(self, point: str | CutPoint) -> CutPoint:
        """The cut point called ``point``: a boundary name, a module path, an alias or a node name."""
        if isinstance(point, CutPoint):
            point = point.node
        for group in (self.boundaries, self.stage_starts, self.cut_points):
            for cp in group:
                if point == cp.name or point == cp.node or point in cp.aliases:
                    return cp
        raise CutPointError(self._unknown_point_message(point))

    def _unknown_point_message(self, point: str) -> str:
        names = [cp.name for cp in self.cut_points] + [a for cp in self.cut_points for a in cp.aliases]
        close = difflib.get_close_matches(point, names, n=5, cutoff=0.5)
        hint = f" Closest: {', '.join(close)}." if close else ""
        bnames = ", ".join(b.name for b in self.boundaries)
        return (
            f"{point!r} is not a cut point of {self.name}: it is not a module or node whose output"
            f" every path goes through.{hint} Boundaries: {bnames}."
            " (`fusionsearch inspect --all-cuts` lists every cut point.)"
        )

    def split(self, points: Iterable[str | CutPoint]) -> list[Segment]:
        """Segments that, run in order (``run_segments``), equal ``module(x)`` bit for bit.

        ``points`` may be any cut points, in any order; duplicates are dropped. There is one
        segment per point plus one after the last point, unless the last point is the output.
        """
        cps = sorted(
            {self.resolve(p).node: self.resolve(p) for p in points}.values(),
            key=lambda c: c.index,
        )
        assert self._eval_index is not None
        eval_parts = self._eval_index.split([_known(self._eval_index.node(c.node)) for c in cps])
        train_parts: list[Any] = [None] * len(eval_parts)
        if self._train_index is not None:
            nodes = [self._train_index.counterpart.get(c.node) for c in cps]
            bad = [c.name for c, n in zip(cps, nodes) if n is None or n not in self._train_index.cuts]
            if bad:
                raise CutPointError(
                    f"{', '.join(bad)} of {self.name} can be cut in eval mode but not in train mode"
                    " (its Python code branches on self.training): choose other cut points."
                )
            train_parts = [gm for gm, _, _ in self._train_index.split([_known(n) for n in nodes])]
        names = [c.name for c in cps]
        segments = []
        for i, ((gm, side_in, side_out), train_gm) in enumerate(zip(eval_parts, train_parts)):
            start = names[i - 1] if i > 0 else None
            end = names[i] if i < len(names) else None
            segments.append(Segment(gm, train_gm, start, end, side_in, side_out))
        return segments

    def to_dict(self, all_cuts: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "input_size": list(self.input_size),
            "params": self.num_params,
            "boundaries": [b.to_dict() for b in self.boundaries],
            "stage_starts": [b.to_dict() for b in self.stage_starts],
            "uncut_resolutions": [list(r) for r in self.uncut_resolutions],
            "train_graph_differs": self.train_graph_differs,
            "notes": list(self.notes),
        }
        if all_cuts:
            d["cut_points"] = [c.to_dict() for c in self.cut_points]
        return d


def trace(
    backbone: str | nn.Module,
    input_size: Sequence[int] | None = None,
    *,
    leaf: Iterable[type[nn.Module] | str] = (),
    check: bool = True,
    pretrained: bool = False,
    checkpoint: str | None = None,
    **create_kwargs: Any,
) -> BackboneGraph:
    """Trace a backbone and find its cut points and stage boundaries.

    Args:
        backbone: a timm model name, or any ``nn.Module`` (timm's ``forward_features`` is traced
            when the module has one, else ``forward``).
        input_size: (C, H, W) of the example input used to propagate shapes; default the model's
            own (timm's pretrained config), else 3x224x224.
        leaf: extra modules not to trace through, by class, class name or module path (the fix
            for a module torch.fx cannot trace).
        check: compare the traced graph with the eager model on the example input (raises
            TraceError when they differ, e.g. data-dependent control flow).
        pretrained, checkpoint, create_kwargs: passed to ``create_backbone`` for a name.

    Example:
        >>> g = trace("resnet18", (3, 64, 64))
        >>> [b.name for b in g.boundaries]
        ['act1', 'layer1', 'layer2', 'layer3', 'layer4']
    """
    if isinstance(backbone, str):
        name = backbone
        model = create_backbone(backbone, pretrained=pretrained, checkpoint=checkpoint, **create_kwargs)
    else:
        model = backbone
        name = (
            getattr(getattr(model, "pretrained_cfg", None), "get", lambda *_: None)("architecture")
            or type(model).__name__
        )
    size = tuple(int(s) for s in input_size) if input_size is not None else input_size_of(model)
    if len(size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {tuple(size)}")
    check_input_size(size)
    leaf = list(leaf)
    _check_leaves(model, leaf)
    func = "forward_features" if callable(getattr(model, "forward_features", None)) else "forward"

    was_training = model.training
    try:
        model.eval()
        gm, tracer = _trace_mode(model, name, func, leaf)
        model.train()
        train_traced, _ = _trace_mode(model, name, func, leaf)
    finally:
        model.train(was_training)
    same = [_signature(n) for n in train_traced.graph.nodes] == [_signature(n) for n in gm.graph.nodes]
    train_gm: fx.GraphModule | None = None if same else train_traced

    x = example_input(size)
    model_mode = model.training
    model.eval()
    try:
        info, out = _run_graph(gm, x, name)
        if check:
            with torch.no_grad():
                ref = getattr(model, func)(x)
            mismatch = first_tensor_mismatch(out, ref)
            if mismatch:
                raise TraceError(
                    f"the traced graph of {name} does not reproduce the model ({mismatch}): its"
                    " Python code likely depends on the input's values. Mark the module with that"
                    " code as a leaf (leaf=[...], --leaf), or pass check=False to keep the graph."
                )
    finally:
        model.train(model_mode)
    index = GraphIndex(gm, info, batch=x.shape[0])
    train_index = None
    if train_gm is not None:
        # train-only nodes (stochastic depth written inline) get no info: never cut there
        match = _align(gm, train_gm)
        train_info = {match[n]: vi for n, vi in info.items() if n in match}
        train_index = GraphIndex(train_gm, train_info, batch=x.shape[0])
        train_index.counterpart = {n.name: t for n, t in match.items()}
    return _analyse(name, model, gm, train_gm, index, train_index, tracer, size)


def _align(a: fx.GraphModule, b: fx.GraphModule) -> dict[fx.Node, fx.Node]:
    """Match the nodes of two traces of one model (eval and train) by their op sequence.

    Node names are no key: an op inserted in train mode renumbers every later op of its kind.
    """
    na, nb = list(a.graph.nodes), list(b.graph.nodes)
    matcher = difflib.SequenceMatcher(None, [_signature(n) for n in na], [_signature(n) for n in nb], autojunk=False)
    return {na[i + k]: nb[j + k] for i, j, size in matcher.get_matching_blocks() for k in range(size)}


def _signature(n: fx.Node) -> str:
    if n.op == "call_function":
        target = getattr(n.target, "__name__", str(n.target))
    elif n.op == "get_attr":
        target = str(n.target).rstrip("0123456789")  # _tensor_constant3 vs _tensor_constant17
    else:
        target = str(n.target)
    return f"{n.op}:{target}:{len(n.all_input_nodes)}"


# Shape propagation runs the backbone once on an example image: a 4096 x 4096 one already takes
# gigabytes of activations, and a typo (3,99999,99999) would ask the allocator for 120 GB.
MAX_INPUT_VALUES = 3 * 4096 * 4096


def check_input_size(size: Sequence[int]) -> None:
    """Refuse an example input too large to propagate (``MAX_INPUT_VALUES``), naming the limit."""
    c, h, w = (int(v) for v in size)
    if min(c, h, w) < 1:
        raise ArgumentError(f"input size {c}x{h}x{w}: every dimension must be >= 1")
    if c * h * w > MAX_INPUT_VALUES:
        raise ArgumentError(
            f"input size {c}x{h}x{w} has {c * h * w:,} values, over the limit of {MAX_INPUT_VALUES:,} (3x4096x4096):"
            " the stage boundaries are the same at a smaller size that the strides divide"
        )


def _check_leaves(model: nn.Module, leaf: Sequence[Any]) -> None:
    """A ``leaf`` given by name must name a module class or path of ``model``: a typo would
    otherwise be ignored and the module traced through after all."""
    names = [x for x in leaf if isinstance(x, str)]
    if not names:
        return
    known = {n for n, _ in model.named_modules() if n} | {type(m).__name__ for m in model.modules()}
    bad = [n for n in names if n not in known]
    if bad:
        hint = did_you_mean(bad[0], sorted(known))
        raise ArgumentError(
            f"leaf {bad[0]!r} is neither a module class nor a module path of {type(model).__name__}{hint}"
            " (`print(model)` shows both)"
        )


def _trace_mode(model: nn.Module, name: str, func: str, leaf: list[Any]) -> tuple[fx.GraphModule, BackboneTracer]:
    tracer = BackboneTracer([*STOCHASTIC_LEAVES, *leaf], traced_func_name=func)
    try:
        graph = tracer.trace(model, concrete_args=concrete_defaults(getattr(type(model), func)))
    except Exception as e:  # torch.fx raises many types; all mean "cannot trace"
        raise _trace_failure(name, tracer, e) from e
    gm = fx.GraphModule(tracer.root, graph, class_name=type(model).__name__ + "Graph")
    inline_constant_placeholders(gm)
    gm.meta["module_outputs"] = {p: n.name for p, n in tracer.module_outputs.items()}
    return gm, tracer


def _trace_failure(name: str, tracer: BackboneTracer, e: Exception) -> TraceError:
    reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if tracer.failed_in is None or not tracer.failed_in[0]:
        return TraceError(
            f"torch.fx cannot trace {name}: {reason}. The failing code is in the model's own"
            " forward_features, which cannot be made a leaf; trace a submodule instead or wrap the"
            " offending function with torch.fx.wrap.",
        )
    path, module = tracer.failed_in
    cls = type(module).__name__
    return TraceError(
        f"torch.fx cannot trace {name}: {reason}. The failing code is in module {path!r} ({cls}). "
        f"Mark it as a leaf so it runs as one opaque call: fs.trace(..., leaf=[{cls!r}]) or"
        f" `fusionsearch inspect --leaf {cls}` (or the path {path!r} for that instance only).",
        module_path=path,
        module_type=cls,
    )


def _run_graph(gm: fx.GraphModule, x: torch.Tensor, name: str) -> tuple[dict[fx.Node, Any], Any]:
    try:
        return record_values(gm, x)
    except (torch.OutOfMemoryError, MemoryError) as e:
        size = "x".join(map(str, x.shape[1:]))
        raise TraceError(
            f"out of memory running {name} on one {size} input to find its cut points: trace at a smaller"
            " input size (--input-size / --size), on a machine with more memory"
        ) from e
    except Exception as e:
        size = "x".join(map(str, x.shape[1:]))
        first = (str(e).strip().splitlines() or [""])[0]
        raise TraceError(
            f"the traced graph of {name} fails on a {size} input ({type(e).__name__}: {first}). If the model"
            " itself runs at this size, a Python branch was baked in at trace time: mark the module holding it"
            " as a leaf (--leaf); otherwise give an input size the model accepts."
        ) from e


def _known(node: fx.Node | None) -> fx.Node:
    """A node the index has (cut points were resolved against it)."""
    assert node is not None
    return node


def _layout(shape: tuple[int, ...], hw: tuple[int, int], prev: str | None) -> str:
    h, w = hw
    if 0 in shape:
        return "other"
    if len(shape) == 3:  # (a, b, c) per sample
        a, b, c = shape
        nchw = b <= h and c <= w and _same_ratio(h / b, w / c)
        nhwc = a <= h and b <= w and _same_ratio(h / a, w / b)
        if nchw and nhwc:
            return prev if prev in ("NCHW", "NHWC") else "NCHW"
        return "NCHW" if nchw else "NHWC" if nhwc else "other"
    if len(shape) == 2:
        n, c = shape
        grid = [h * w // (r * r) for r in (1, 2, 4, 8, 14, 16, 32, 64)]
        if c in grid and n not in grid and not any(n - g in (1, 2, 4, 5, 8, 16) for g in grid if n > g):
            return "NCL"
        return "NLC"
    if len(shape) == 1:
        return "NC"
    return "other"


def _same_ratio(rh: float, rw: float) -> bool:
    return rh >= 1 and rw >= 1 and abs(rh - rw) <= 0.25 * max(rh, rw)


def _channels(shape: tuple[int, ...], layout: str) -> int:
    return channels_of(shape, layout)


def _reduction(shape: tuple[int, ...], layout: str, hw: tuple[int, int], prefix: int) -> int | None:
    h, w = hw
    if layout == "NCHW":
        return max(1, round(h / shape[1]))
    if layout == "NHWC":
        return max(1, round(h / shape[0]))
    if layout in ("NLC", "NCL"):
        n = shape[0] if layout == "NLC" else shape[1]
        # with or without the class/register tokens, whichever leaves a whole grid of patches
        for tokens in (n - prefix, n):
            r = math.sqrt(h * w / tokens) if tokens > 0 else 0
            if r and (h / r).is_integer() and (w / r).is_integer():
                return max(1, round(r))
        return max(1, round(math.sqrt(h * w / n))) if n > 0 else None
    return None


def _analyse(
    name: str,
    model: nn.Module,
    gm: fx.GraphModule,
    train_gm: fx.GraphModule | None,
    index: GraphIndex,
    train_index: GraphIndex | None,
    tracer: BackboneTracer,
    size: tuple[int, int, int],
) -> BackboneGraph:
    hw = (size[1], size[2])
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    aliases: dict[str, list[str]] = {}
    for path, node in tracer.module_outputs.items():
        if path:
            aliases.setdefault(node.name, []).append(path)
    params_at = _cumulative_params(gm, index.nodes)
    feature_modules = _feature_info_modules(model)

    cut_points: list[CutPoint] = []
    prev_layout = None
    for n in index.cuts:
        vi = index.info[n]
        shape = vi.shape[1:]
        layout = _layout(shape, hw, prev_layout)
        prev_layout = layout
        # feature_info's names first (what features_only users know), then the outermost module
        names = sorted(
            aliases.get(n.name, []),
            key=lambda p: (p not in feature_modules, p.count("."), len(p)),
        )
        cut_points.append(
            CutPoint(
                name=names[0] if names else n.name,
                node=n.name,
                index=index.pos[n],
                shape=shape,
                layout=layout,
                channels=_channels(shape, layout),
                reduction=_reduction(shape, layout, hw, prefix),
                nonnegative=vi.nonnegative or _is_relu(gm, n),
                params_before=params_at[index.pos[n]],
                aliases=tuple(names[1:]),
            )
        )

    boundaries, starts = _stages(cut_points, feature_modules, tracer, model)
    notes: list[str] = []
    cut_res = {c.spatial for c in cut_points if is_map(c.layout)}
    seen_res: list[tuple[int, ...]] = []
    for n in index.nodes:
        info = index.info.get(n)
        if (
            n.op != "placeholder"
            and n in index.relevant
            and info is not None
            and info.kind == "tensor"
            and len(info.shape) == 4
            and info.shape[0] == index.batch
        ):
            res = _spatial_of(info.shape[1:], hw)
            # a squeeze-excite branch's pooled 1x1 is no stage
            if (
                res is not None
                and res != (1, 1)
                and hw[0] % res[0] == 0  # attention maps (N x N) are not feature maps
                and hw[1] % res[1] == 0
                and res not in cut_res
                and res not in seen_res
            ):
                seen_res.append(res)
    if seen_res:
        notes.append(
            f"no single-tensor cut point at resolution(s) {_res_list(seen_res)}:"
            " the net carries several tensors there (parallel branches); fusion can only go at the"
            " cut points that exist."
        )
        warnings.warn(f"{name}: {notes[-1]}", FusionSearchWarning, stacklevel=3)
    if train_gm is not None:
        notes.append("the train-mode graph differs from the eval-mode graph; segments keep both.")
    if len(boundaries) < 3:
        notes.append(f"only {len(boundaries)} stage boundaries found; use --all-cuts for every cut point.")
    return BackboneGraph(
        name=name,
        model=model,
        module=gm,
        input_size=size,
        cut_points=cut_points,
        boundaries=boundaries,
        stage_starts=starts,
        train_module=train_gm,
        uncut_resolutions=seen_res,
        notes=notes,
        _eval_index=index,
        _train_index=train_index,
    )


def _res_list(res: list[tuple[int, ...]]) -> str:
    return ", ".join("x".join(map(str, r)) for r in res)


def _spatial_of(shape: tuple[int, ...], hw: tuple[int, int]) -> tuple[int, ...] | None:
    layout = _layout(shape, hw, None)
    return spatial_of(shape, layout) if is_map(layout) else None


def _is_relu(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_module":
        return isinstance(gm.get_submodule(str(n.target)), (nn.ReLU, nn.ReLU6))
    return n.target in (torch.relu, torch.nn.functional.relu, torch.relu_)


def _cumulative_params(gm: fx.GraphModule, nodes: list[fx.Node]) -> list[int]:
    seen: set[int] = set()
    total, out = 0, []
    for n in nodes:
        tensors: list[torch.Tensor] = []
        if n.op == "call_module":
            tensors = list(gm.get_submodule(str(n.target)).parameters())
        elif n.op == "get_attr":
            obj: Any = gm
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            tensors = [obj] if isinstance(obj, nn.Parameter) else []
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel()
        out.append(total)
    return out


def _feature_info_modules(model: nn.Module) -> list[str]:
    info = getattr(model, "feature_info", None)
    if info is None:
        return []
    entries = info.info if hasattr(info, "info") else info
    try:
        return [str(e["module"]) for e in entries if isinstance(e, dict) and "module" in e]
    except TypeError:
        return []


def _block_outputs(cps: list[CutPoint], model: nn.Module) -> list[CutPoint]:
    """Cut points that are the output of a child of a Sequential/ModuleList (a block)."""
    out = []
    for cp in cps:
        for path in (cp.name, *cp.aliases):
            parent, _, child = path.rpartition(".")
            if not parent or not child.isdigit():
                continue
            try:
                container = model.get_submodule(parent)
            except AttributeError:
                continue
            if isinstance(container, (nn.Sequential, nn.ModuleList)):
                out.append(cp)
                break
    return out


def _stages(
    cps: list[CutPoint],
    feature_modules: list[str],
    tracer: BackboneTracer,
    model: nn.Module,
) -> tuple[list[Boundary], list[Boundary]]:
    by_module = {}
    for path in feature_modules:
        node = tracer.module_outputs.get(path)
        if node is not None:
            by_module[node.name] = path
    runs: list[list[CutPoint]] = []
    for cp in (c for c in cps if c.layout != "other"):
        key = (is_tokens(cp.layout), cp.spatial, cp.layout == Layout.NC)
        if (
            runs
            and (
                is_tokens(runs[-1][0].layout),
                runs[-1][0].spatial,
                runs[-1][0].layout == Layout.NC,
            )
            == key
        ):
            runs[-1].append(cp)
        else:
            runs.append([cp])
    named_reductions = {cp.reduction for run in runs for cp in run if cp.node in by_module}
    ends: list[Boundary] = []
    starts: list[Boundary] = []
    for i, run in enumerate(runs):
        named = [cp for cp in run if cp.node in by_module]
        if named:
            chosen = [(cp, by_module[cp.node]) for cp in named]
        elif run[-1].reduction in named_reductions:
            chosen = []  # feature_info already has this stage (e.g. a ViT's patch embedding)
        elif is_tokens(run[0].layout):
            blocks = _block_outputs(run, model)
            chosen = [(cp, cp.name) for cp in (blocks or run[-1:])]
        else:
            chosen = [(run[-1], run[-1].name)]
        for cp, label in chosen:
            if ends and cp.reduction is not None and ends[-1].reduction and cp.reduction < ends[-1].reduction:
                continue  # a reshaped attention tensor that only looks like a feature map
            ends.append(_boundary(cp, label, len(ends), "end"))
        here, before = run[0].reduction, runs[i - 1][0].reduction if i > 0 else None
        if here and before and here > before:
            starts.append(_boundary(run[0], run[0].name, len(starts), "start"))
    return ends, starts


def _boundary(cp: CutPoint, label: str, stage: int, kind: str) -> Boundary:
    fields = cp.to_dict()
    names = [cp.name, *cp.aliases]
    fields["name"] = label
    fields["aliases"] = tuple(n for n in names if n != label)
    return Boundary(**fields, stage=stage, kind=kind)
