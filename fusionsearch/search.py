"""The search, in one import: the study (``study``), the queue inside it (``queueing``), what a
trial does (``objective``), the worker process (``worker``), and which failures come back
(``recovery``). Each of those modules has one job; this one only gathers their public names, so
``from fusionsearch.search import prepare_study, run_worker`` keeps working.
"""

from __future__ import annotations

from .fusion import fusion_weights
from .objective import Objective, failure_reason
from .queueing import heartbeat_interval, is_baseline, is_reference, reap_stale, single_metrics, storage_url
from .study import (
    KEEP_NETS,
    METRIC_NAMES,
    OBJECTIVES,
    PRUNERS,
    StudySettings,
    grid_points,
    load_study,
    make_pruner,
    make_sampler,
    prepare_confirmation,
    prepare_study,
    rungs,
    trial_steps,
)
from .worker import run_worker, trial_label

__all__ = [
    "StudySettings",
    "OBJECTIVES",
    "METRIC_NAMES",
    "PRUNERS",
    "KEEP_NETS",
    "make_sampler",
    "make_pruner",
    "trial_steps",
    "rungs",
    "prepare_study",
    "prepare_confirmation",
    "grid_points",
    "load_study",
    "is_baseline",
    "is_reference",
    "single_metrics",
    "storage_url",
    "reap_stale",
    "heartbeat_interval",
    "Objective",
    "failure_reason",
    "run_worker",
    "trial_label",
    "fusion_weights",
]
