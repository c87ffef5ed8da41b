"""torch.fx plumbing: a tracer that knows timm's leaf modules, and an interpreter that records values.

Kept apart from ``_tracing`` and ``_analysis`` so that the graph analysis reads as analysis, not
as tracer bookkeeping.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from torch import fx, nn
from torchvision.models.feature_extraction import LeafModuleAwareTracer

__all__ = ["BackboneTracer", "ValueInfo", "concrete_defaults", "record_values"]


class BackboneTracer(LeafModuleAwareTracer):
    """Traces ``traced_func_name`` of a module (``forward_features`` for timm models).

    On top of timm's leaf modules and autowrapped functions it accepts leaves given by class,
    class name or module path, remembers which node each module call returned (so that stage
    names are the module names timm users know), and which module was being traced when tracing
    failed (so that the error can name it).
    """

    def __init__(
        self,
        leaf: Iterable[type[nn.Module] | str] = (),
        traced_func_name: str = "forward",
    ) -> None:
        leaf = list(leaf)
        classes = [x for x in leaf if isinstance(x, type)]
        self.leaf_names = {x for x in leaf if isinstance(x, str)}
        super().__init__(
            leaf_modules=list(get_notrace_modules()) + classes,
            autowrap_functions=tuple(get_notrace_functions()),
        )
        self.traced_func_name = traced_func_name
        self.module_outputs: dict[str, fx.Node] = {}
        self.stack: list[tuple[str, nn.Module]] = []
        self.failed_in: tuple[str, nn.Module] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualname: str) -> bool:
        if module_qualname in self.leaf_names or type(m).__name__ in self.leaf_names:
            return True
        return super().is_leaf_module(m, module_qualname)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        path = self.path_of_module(m)
        self.stack.append((path, m))
        try:
            out = super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module sees the exception first
                self.failed_in = (path, m)
            raise
        finally:
            self.stack.pop()
        if isinstance(out, fx.Proxy) and path not in self.module_outputs:
            self.module_outputs[path] = out.node
        return out


def concrete_defaults(fn: Any) -> dict[str, Any]:
    """Every argument after the image, fixed to its default (hiera's ``mask=None`` and the like).

    Optional arguments otherwise become graph inputs whose ``if arg is None`` branches are baked
    in at trace time and only fail when the graph runs.
    """
    params = list(inspect.signature(fn).parameters.values())[2:]  # self, x
    return {
        p.name: p.default
        for p in params
        if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _swapper(ph: fx.Node, value: Any) -> Callable[[fx.Node], Any]:
    """A ``map_arg`` function that replaces the placeholder ``ph`` by ``value``."""

    def swap(a: fx.Node) -> Any:
        return value if a is ph else a

    return swap


def inline_constant_placeholders(gm: fx.GraphModule) -> None:
    """Replace the placeholders of concrete arguments by their values, keeping one graph input."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for ph in placeholders[1:]:
        value = ph.args[0] if ph.args else None
        for user in list(ph.users):
            if user.op == "call_function" and getattr(user.target, "__name__", "") == "_assert_is_none":
                gm.graph.erase_node(user)
                continue
            swap = _swapper(ph, value)
            user.args = fx.node.map_arg(user.args, swap)
            user.kwargs = fx.node.map_arg(user.kwargs, swap)
        gm.graph.erase_node(ph)
    gm.graph.lint()
    gm.recompile()


@dataclass(frozen=True)
class ValueInfo:
    """What a node produced on the example input.

    ``kind`` is ``tensor`` (one tensor), ``meta`` (sizes, dtypes, devices, None: values that only
    describe tensors and never carry their data) or ``other`` (tuples of tensors, anything else).
    """

    kind: str
    shape: tuple[int, ...] = ()
    dtype: torch.dtype | None = None
    nonnegative: bool = False


_META_TYPES = (
    int,
    float,
    bool,
    str,
    torch.Size,
    torch.dtype,
    torch.device,
    type(None),
    torch.SymInt,
)


def _is_meta(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_meta(v) for v in value)
    return isinstance(value, _META_TYPES) or value is Ellipsis or isinstance(value, slice)


def describe(value: Any) -> ValueInfo:
    if isinstance(value, torch.Tensor):
        nonneg = bool(value.is_floating_point() and value.numel() > 0 and value.min() >= 0)
        return ValueInfo("tensor", tuple(value.shape), value.dtype, nonneg)
    if _is_meta(value):
        return ValueInfo("meta")
    return ValueInfo("other")


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.info: dict[fx.Node, ValueInfo] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.info[n] = describe(result)
        return result


def record_values(gm: fx.GraphModule, x: torch.Tensor) -> tuple[dict[fx.Node, ValueInfo], Any]:
    """Run ``gm`` on ``x`` without gradients; return each node's ValueInfo and the output."""
    rec = _Recorder(gm)
    with torch.no_grad():
        out = rec.run(x)
    return rec.info, out


def first_tensor_mismatch(a: Any, b: Any) -> str | None:
    """Where two nested outputs differ (None if they are equal), for the eager-vs-graph check."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        if not torch.equal(a, b):
            diff = (a.float() - b.float()).abs().max().item()
            return f"values differ (max abs difference {diff:.3g})"
        return None
    if isinstance(a, Sequence) and isinstance(b, Sequence) and not isinstance(a, str):
        if len(a) != len(b):
            return f"{len(a)} outputs vs {len(b)}"
        for x, y in zip(a, b):
            msg = first_tensor_mismatch(x, y)
            if msg:
                return msg
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        return first_tensor_mismatch(list(a.values()), list(b.values()))
    return None if a == b else f"{a!r} vs {b!r}"
