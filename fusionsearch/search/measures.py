"""How a trained job measures each objective of its study (``settings.OBJECTIVES``): one entry of
``MEASURES`` per objective rather than a branch, each recording what a report reads.

Delta-m is measured against the job's ``Reference``: the single-task run of the search or of the
confirmation's seed, waited for if it is not complete yet, or the job's own metrics when it is
that run; a job with no reference (the warm start) scores 0 and is ranked nowhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from fusionsearch.search.context import JobContext, Reference
from fusionsearch.search.records import TrialRecord
from fusionsearch.train.devices import latency_ms

__all__ = ["MEASURES", "Measure"]

# (context, trial, training result, parameter count, the job's reference) -> the objective's value
Measure = Callable[[JobContext, optuna.Trial, Any, int, "Reference | None"], float]


def _delta_m(ctx: JobContext, trial: optuna.Trial, result: Any, params: int, ref: Reference | None) -> float:
    if ref is None:  # the others' start, not a competitor: no Delta-m, ranked nowhere
        return 0.0
    single = {"metrics": result.metrics} if ref.own else ctx.deps.reference(ref, wait=True)
    assert single is not None
    dm = ctx.exp.delta_m(result.metrics, single["metrics"])
    TrialRecord(trial).delta_m = dm
    return dm


def _params(ctx: JobContext, trial: optuna.Trial, result: Any, params: int, ref: Reference | None) -> float:
    return float(params)


def _latency(ctx: JobContext, trial: optuna.Trial, result: Any, params: int, ref: Reference | None) -> float:
    ms = latency_ms(result.net, ctx.exp.input_size, next(result.net.parameters()).device)
    TrialRecord(trial).latency_ms = ms
    return ms


# objective name -> how a trained trial measures it
MEASURES: dict[str, Measure] = {"delta_m": _delta_m, "params": _params, "latency": _latency}
