"""Cutting a traced graph into segments that run one after another.

A segment is a ``GraphModule`` built from the node list of the traced backbone between two cut
points, with the backbone's own submodules (not ``split_module``'s flattened parameters). Values
that are not the cut tensor but are still needed later (sizes read early and used late, as in
XCiT or EVA) travel beside the tensor as extra outputs and inputs: ``segment(x, *side)``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from fusionsearch.graph._fx import ValueInfo

__all__ = ["GraphIndex", "Segment", "run_segments"]


@dataclass
class GraphIndex:
    """A traced graph with what the cut analysis needs: order, value kinds, constants, cut nodes."""

    gm: fx.GraphModule
    info: dict[fx.Node, ValueInfo]
    batch: int = 1
    counterpart: dict[str, fx.Node] = field(default_factory=dict)
    nodes: list[fx.Node] = field(init=False)
    pos: dict[fx.Node, int] = field(init=False)
    constant: set[fx.Node] = field(init=False)
    sink: fx.Node = field(init=False)
    cuts: list[fx.Node] = field(init=False)
    relevant: set[fx.Node] = field(init=False)

    def __post_init__(self) -> None:
        self.nodes = list(self.gm.graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        inp = self.input
        output = self.nodes[-1]
        ret = output.args[0]
        self.sink = ret if isinstance(ret, fx.Node) and self.kind(ret) == "tensor" else output

        dependent = _closure([inp], lambda n: n.users)
        self.constant = {n for n in self.nodes if n not in dependent}
        # Edges that carry only sizes/dtypes are ignored for dominance: a shape read early and used
        # late must not stop us from cutting in between; the value travels beside the tensor.
        data_users = lambda n: () if self.kind(n) == "meta" else n.users
        data_inputs = lambda n: [a for a in n.all_input_nodes if self.kind(a) != "meta"]
        reach = _closure([inp], data_users)
        coreach = _closure([self.sink], data_inputs)
        self.relevant = reach & coreach

        # A node dominates the sink iff no data edge between relevant nodes jumps over it.
        cover = [0] * (len(self.nodes) + 1)
        for w in self.relevant:
            for u in data_inputs(w):
                if u in self.relevant and self.pos[w] - self.pos[u] > 1:
                    cover[self.pos[u] + 1] += 1
                    cover[self.pos[w]] -= 1
        running, self.cuts = 0, []
        for i, n in enumerate(self.nodes):
            running += cover[i]
            info = self.info.get(n)
            if (
                running == 0
                and n in self.relevant
                and n.op != "placeholder"
                and info is not None
                and info.kind == "tensor"
                and info.dtype is not None
                and info.dtype.is_floating_point
                and info.shape[:1] == (self.batch,)  # not windows or heads folded into the batch
            ):
                self.cuts.append(n)

    @property
    def input(self) -> fx.Node:
        return next(n for n in self.nodes if n.op == "placeholder")

    def kind(self, n: fx.Node) -> str:
        info = self.info.get(n)
        return info.kind if info is not None else "other"

    def node(self, name: str) -> fx.Node | None:
        return next((n for n in self.nodes if n.name == name), None)

    def split(self, cuts: Sequence[fx.Node]) -> list[tuple[fx.GraphModule, int, int]]:
        """GraphModules for the pieces between ``cuts`` (sorted cut nodes of this graph).

        Returns ``(module, side_inputs, side_outputs)`` per segment; the piece after the last cut
        is left out when the last cut is the output itself.
        """
        cpos = [self.pos[c] for c in cuts]
        seg = {n: bisect_left(cpos, self.pos[n]) for n in self.nodes if n not in self.constant}
        final = len(cuts) - 1 if cuts and cuts[-1] is self.sink else len(cuts)
        last_use = {v: max((seg[u] for u in v.users if u in seg), default=seg[v]) for v in seg}
        live_in = [
            sorted((v for v in seg if seg[v] < s <= last_use[v]), key=self.pos.__getitem__) for s in range(final + 1)
        ]
        out = []
        for s in range(final + 1):
            main_in = self.input if s == 0 else cuts[s - 1]
            side_in = [v for v in live_in[s] if v is not main_in]
            main_out = cuts[s] if s < final else None
            side_out = [v for v in live_in[s + 1] if v is not main_out] if s < final else []
            gm = self._build(s, seg, main_in, side_in, main_out, side_out)
            out.append((gm, len(side_in), len(side_out)))
        return out

    def _build(
        self,
        s: int,
        seg: dict[fx.Node, int],
        main_in: fx.Node,
        side_in: list[fx.Node],
        main_out: fx.Node | None,
        side_out: list[fx.Node],
    ) -> fx.GraphModule:
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {main_in: g.placeholder("x")}
        for v in side_in:
            env[v] = g.placeholder(f"side_{v.name}")
        body = [n for n in self.nodes if seg.get(n) == s and n.op not in ("placeholder", "output")]
        consts = _closure(
            [a for n in body for a in n.all_input_nodes if a in self.constant],
            lambda n: [a for a in n.all_input_nodes if a in self.constant],
        )
        for n in self.nodes:
            if n in consts or (n in body and n not in env):
                env[n] = g.node_copy(n, env.__getitem__)
        if main_out is None:  # the final segment returns what the backbone returns
            g.output(fx.node.map_arg(self.nodes[-1].args[0], env.__getitem__))
        else:
            outs = [env[main_out]] + [env[v] for v in side_out]
            g.output(outs[0] if len(outs) == 1 else tuple(outs))
        g.lint()
        return fx.GraphModule(self.gm, g, class_name="SegmentGraph")


def _closure(start: Any, step: Any) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = list(start)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo.extend(step(n))
    return seen


class Segment(nn.Module):
    """One piece of a backbone between two cut points: ``segment(x, *side) -> x' | (x', *side')``.

    Holds the eval-mode graph and, for the few nets whose Python code branches on
    ``self.training`` (stochastic depth written as ``if self.training``), the train-mode graph too;
    both use the same submodules, so there is one set of weights.
    """

    def __init__(
        self,
        eval_graph: fx.GraphModule,
        train_graph: fx.GraphModule | None,
        start: str | None,
        end: str | None,
        side_in: int,
        side_out: int,
    ) -> None:
        super().__init__()
        self.eval_graph = eval_graph
        self.train_graph = train_graph
        self.start = start
        self.end = end
        self.side_in = side_in
        self.side_out = side_out

    def forward(self, x: torch.Tensor, *side: Any) -> Any:
        """Run the piece (its train-mode graph in training where the two differ)."""
        graph = self.train_graph if self.training and self.train_graph is not None else self.eval_graph
        return graph(x, *side)

    def step(self, x: torch.Tensor, side: tuple[Any, ...] = ()) -> tuple[Any, tuple[Any, ...]]:
        """Run and split the result into the tensor and the side values for the next segment."""
        out = self(x, *side)
        if self.side_out:
            return out[0], tuple(out[1:])
        return out, ()

    def extra_repr(self) -> str:
        return f"start={self.start!r}, end={self.end!r}, side_in={self.side_in}, side_out={self.side_out}"


def run_segments(segments: Sequence[Segment], x: torch.Tensor) -> Any:
    """Run segments in order, passing the side values along; equals the backbone's output."""
    side: tuple[Any, ...] = ()
    for segment in segments:
        x, side = segment.step(x, side)
    return x
