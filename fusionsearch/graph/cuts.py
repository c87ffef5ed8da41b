"""The backbone graph: trace any timm backbone, find where it can be cut, split it exactly.

``trace`` turns a model into a :class:`BackboneGraph`. Its cut points are the nodes that carry
one tensor and that every input-to-output path crosses (dominators of the output, ignoring edges
that only carry sizes); its boundaries are the stage outputs among them, named as timm's
``feature_info`` names them where it can. ``split`` cuts the graph at any cut points into
segments whose chained output equals the model's ``forward_features`` bit for bit.

This module is the entry, ``trace`` as its steps and what it returns; the torch.fx runs behind
the steps are ``_tracing``, what the traced values say about each cut point ``_analysis``, the
choice of stage boundaries ``_stages``, and the cut point types ``points``.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from fusionsearch.errors import CutPointError, FusionSearchWarning
from fusionsearch.graph._analysis import find_cut_points, uncut_resolutions
from fusionsearch.graph._fx import BackboneTracer
from fusionsearch.graph._stages import feature_info_modules, stage_boundaries
from fusionsearch.graph._tracing import (
    check_input_size,
    check_leaves,
    index_train_graph,
    propagate,
    trace_both_modes,
)
from fusionsearch.graph.backbone import create_backbone, example_input, input_size_of
from fusionsearch.graph.points import Boundary, CutPoint
from fusionsearch.graph.segments import GraphIndex, Segment

__all__ = ["BackboneGraph", "trace"]


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
        """The graph as plain data (``inspect --json``); ``all_cuts``: every cut point, not only boundaries."""
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
        pretrained: load timm's pretrained weights (a name only; passed to ``create_backbone``).
        checkpoint: a local weights file to load into the backbone (a name only).
        **create_kwargs: further arguments of ``timm.create_model`` (a name only).

    Examples:
        >>> g = trace("resnet18", (3, 64, 64))
        >>> [b.name for b in g.boundaries]
        ['act1', 'layer1', 'layer2', 'layer3', 'layer4']
    """
    model, name = _model_and_name(backbone, pretrained, checkpoint, create_kwargs)
    size = _input_size(model, input_size)
    leaf = list(leaf)
    check_leaves(model, leaf)
    func = "forward_features" if callable(getattr(model, "forward_features", None)) else "forward"
    gm, train_gm, tracer = trace_both_modes(model, name, func, leaf)
    x = example_input(size)
    info = propagate(model, gm, x, name, func, check)
    index = GraphIndex(gm, info, batch=x.shape[0])
    train_index = None if train_gm is None else index_train_graph(gm, train_gm, info, batch=x.shape[0])
    return _analyse(name, model, gm, train_gm, index, train_index, tracer, size)


def _model_and_name(
    backbone: str | nn.Module, pretrained: bool, checkpoint: str | None, create_kwargs: dict[str, Any]
) -> tuple[nn.Module, str]:
    """The model to trace and the name errors and notes call it by: the timm name it was created
    from, else its pretrained config's architecture, else its class."""
    if isinstance(backbone, str):
        name = backbone
        model = create_backbone(backbone, pretrained=pretrained, checkpoint=checkpoint, **create_kwargs)
    else:
        model = backbone
        name = (
            getattr(getattr(model, "pretrained_cfg", None), "get", lambda *_: None)("architecture")
            or type(model).__name__
        )
    return model, name


def _input_size(model: nn.Module, input_size: Sequence[int] | None) -> tuple[int, int, int]:
    """The (C, H, W) of the example input: the one given, checked, else the model's own."""
    size = tuple(int(s) for s in input_size) if input_size is not None else input_size_of(model)
    if len(size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {tuple(size)}")
    check_input_size(size)
    return size


def _known(node: fx.Node | None) -> fx.Node:
    """A node the index has (cut points were resolved against it)."""
    assert node is not None
    return node


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
    """The graph with its cut points, stage boundaries and the notes a user should read."""
    hw = (size[1], size[2])
    feature_modules = feature_info_modules(model)
    cut_points = find_cut_points(model, gm, index, tracer, hw, feature_modules)
    boundaries, starts = stage_boundaries(cut_points, feature_modules, tracer, model)
    notes: list[str] = []
    seen_res = uncut_resolutions(index, cut_points, hw)
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
