"""What the traced values say about each cut point: its layout, channels, reduction, name, the
parameters before it, and the resolutions the net passes through without a cut point.

It reads one run of the graph on the example input (``GraphIndex``) and the tracer's module
outputs; kept apart from the tracing (``cuts``) so that each reads as one job, and from the stage
boundaries (``_stages``), which only need the finished cut points.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import fx, nn

from fusionsearch.graph._fx import BackboneTracer
from fusionsearch.graph.layouts import channels_of, is_map, spatial_of
from fusionsearch.graph.points import CutPoint
from fusionsearch.graph.segments import GraphIndex

__all__ = ["find_cut_points", "uncut_resolutions"]


def find_cut_points(
    model: nn.Module,
    gm: fx.GraphModule,
    index: GraphIndex,
    tracer: BackboneTracer,
    hw: tuple[int, int],
    feature_modules: list[str],
) -> list[CutPoint]:
    """One :class:`CutPoint` per cut node of ``index``, in graph order.

    A cut point is named by ``feature_info``'s name first (what ``features_only`` users know),
    then by the outermost module that returns it; its other module paths become aliases. The
    layout of an ambiguous shape follows the cut point before it.
    """
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    aliases = _module_paths(tracer)
    params_at = _cumulative_params(gm, index.nodes)
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
    return cut_points


def _module_paths(tracer: BackboneTracer) -> dict[str, list[str]]:
    """Node name -> the paths of the modules whose call returned that node (the root excluded)."""
    aliases: dict[str, list[str]] = {}
    for path, node in tracer.module_outputs.items():
        if path:
            aliases.setdefault(node.name, []).append(path)
    return aliases


def uncut_resolutions(index: GraphIndex, cut_points: list[CutPoint], hw: tuple[int, int]) -> list[tuple[int, ...]]:
    """The feature map resolutions the net computes at but has no cut point at, in graph order:
    there it carries several tensors (parallel branches), so fusion cannot go there."""
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
    return seen_res


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
