"""Stage boundaries: which cut points end a stage (and which start one), and what to call them.

A stage is a run of cut points at one resolution and layout; timm's ``feature_info`` names the
stage outputs where a model has it. Kept apart from the cut point analysis (``_analysis``) because
it reads only finished cut points and the module tree, not the traced values.
"""

from __future__ import annotations

from torch import nn

from fusionsearch.graph._fx import BackboneTracer
from fusionsearch.graph.layouts import Layout, is_tokens
from fusionsearch.graph.points import Boundary, CutPoint

__all__ = ["feature_info_modules", "stage_boundaries"]


def feature_info_modules(model: nn.Module) -> list[str]:
    """The module paths timm's ``feature_info`` gives as stage outputs (none for a model without
    it): what ``features_only`` users know the stages by, so they name boundaries and cut points."""
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


def stage_boundaries(
    cps: list[CutPoint],
    feature_modules: list[str],
    tracer: BackboneTracer,
    model: nn.Module,
) -> tuple[list[Boundary], list[Boundary]]:
    """The stage ends and the stage starts among ``cps`` (in order).

    Cut points fall into runs of one resolution and layout kind. A run's ends are the cut points
    ``feature_info`` names; in a run it does not name, its last cut point (for tokens, which keep
    one resolution throughout, every block output), unless ``feature_info`` already names a stage
    at that reduction. An end finer than the one before it is no stage. A start is a run's first
    cut point where the reduction grows.
    """
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
