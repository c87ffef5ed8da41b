"""Tracing a timm backbone and finding where it can be cut: the torch.fx tracer that respects timm's
leaf modules (``_fx``), ``trace`` and the graph it returns (``cuts``, on ``_tracing``, ``_analysis``
and ``_stages``), the cut point and stage boundary types (``points``), the runnable pieces
between cuts (``segments``), the NCHW / NHWC / token layouts of a feature (``layouts``), and the
creation of the backbone itself (``backbone``). Nothing here knows of tasks or fusion.
"""

from __future__ import annotations

from fusionsearch.graph.backbone import (
    create_backbone,
    input_size_of,
    load_weights,
    suggest_names,
)
from fusionsearch.graph.cuts import (
    BackboneGraph,
    trace,
)
from fusionsearch.graph.layouts import (
    FUSABLE,
    Layout,
    channels_of,
    from_channels_first,
    is_map,
    is_tokens,
    spatial_of,
    to_channels_first,
)
from fusionsearch.graph.points import (
    Boundary,
    CutPoint,
)
from fusionsearch.graph.segments import (
    GraphIndex,
    Segment,
    run_segments,
)

__all__ = [
    "BackboneGraph",
    "Boundary",
    "CutPoint",
    "trace",
    "GraphIndex",
    "Segment",
    "run_segments",
    "Layout",
    "FUSABLE",
    "channels_of",
    "spatial_of",
    "is_map",
    "is_tokens",
    "to_channels_first",
    "from_channels_first",
    "create_backbone",
    "input_size_of",
    "load_weights",
    "suggest_names",
]
