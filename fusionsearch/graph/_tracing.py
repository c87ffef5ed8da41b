"""Running torch.fx on a backbone: the checks of its inputs, a trace in each mode, one recorded run
on the example input, and the errors that say what to do when any of these fails.

The mechanics of ``cuts.trace``, kept apart so that ``trace`` reads as its steps; the tracer and
the interpreter themselves are ``_fx``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import DropBlock2d, DropPath
from torch import fx, nn

from fusionsearch.errors import ArgumentError, TraceError
from fusionsearch.graph._fx import (
    BackboneTracer,
    ValueInfo,
    concrete_defaults,
    first_tensor_mismatch,
    inline_constant_placeholders,
    record_values,
)
from fusionsearch.graph.segments import GraphIndex
from fusionsearch.validation import did_you_mean

__all__ = [
    "MAX_INPUT_VALUES",
    "STOCHASTIC_LEAVES",
    "check_input_size",
    "check_leaves",
    "propagate",
    "trace_both_modes",
    "index_train_graph",
]

# Modules whose Python code branches on self.training: as leaves they keep one graph for both
# modes and decide at run time, as the eager model does.
STOCHASTIC_LEAVES: tuple[type[nn.Module] | str, ...] = (
    DropPath,
    DropBlock2d,
    "DropPath",
    "StochasticDepth",
)


def trace_both_modes(
    model: nn.Module, name: str, func: str, leaf: list[Any]
) -> tuple[fx.GraphModule, fx.GraphModule | None, BackboneTracer]:
    """The eval-mode graph, the train-mode graph where it differs (None where the two have the
    same op sequence), and the eval tracer; the model's mode is restored."""
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
    return gm, train_gm, tracer


def propagate(
    model: nn.Module, gm: fx.GraphModule, x: torch.Tensor, name: str, func: str, check: bool
) -> dict[fx.Node, ValueInfo]:
    """Run the eval graph on the example input and record every node's value; with ``check``,
    refuse a graph whose output is not the eager model's."""
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
    return info


def index_train_graph(
    gm: fx.GraphModule, train_gm: fx.GraphModule, info: dict[fx.Node, ValueInfo], batch: int
) -> GraphIndex:
    """The train graph's index, with the eval nodes' values carried over to their counterparts."""
    # train-only nodes (stochastic depth written inline) get no info: never cut there
    match = _align(gm, train_gm)
    train_info = {match[n]: vi for n, vi in info.items() if n in match}
    train_index = GraphIndex(train_gm, train_info, batch=batch)
    train_index.counterpart = {n.name: t for n, t in match.items()}
    return train_index


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


def check_leaves(model: nn.Module, leaf: Sequence[Any]) -> None:
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
