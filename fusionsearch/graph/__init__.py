"""Tracing a timm backbone and finding where it can be cut: the torch.fx tracer that respects timm's
leaf modules (``_fx``), ``trace`` and the graph it returns (``cuts``, on ``_tracing``, ``_analysis``
and ``_stages``), the cut point and stage boundary types (``points``), the runnable pieces
between cuts (``segments``), the NCHW / NHWC / token layouts of a feature (``layouts``), and the
creation of the backbone itself (``backbone``). Nothing here knows of tasks or fusion.

Exported: ``trace`` and the types it returns, the segments' runner, and the backbone factory; the
rest is imported from its module. Names load on first use (``registry.lazy_exports``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusionsearch.registry import lazy_exports

if TYPE_CHECKING:
    from fusionsearch.graph.backbone import create_backbone
    from fusionsearch.graph.cuts import BackboneGraph, trace
    from fusionsearch.graph.layouts import Layout
    from fusionsearch.graph.points import Boundary, CutPoint
    from fusionsearch.graph.segments import Segment, run_segments
else:
    __getattr__, __dir__, __all__ = lazy_exports(__name__)
