"""A weighting method from a recipe's spec (a name or ``{name: ..., args: {...}}``), its arguments
checked against the method's signature (and, for TorchJD's aggregators, TorchJD's) before any
study exists.

Cut from the contract (``base``) because it knows both levels: a gradient-level method's
arguments also go to its aggregator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fusionsearch.errors import PlanError
from fusionsearch.schema import check_call
from fusionsearch.tasks.weighting.base import Weighting, get_weighting
from fusionsearch.tasks.weighting.gradient import GradientWeighting, torchjd_aggregator

__all__ = ["make_weighting"]


def make_weighting(
    spec: str | Mapping[str, Any] | None, tasks: Sequence[str], seed: int = 0, where: str = "weighting"
) -> Weighting:
    """A method from a name or ``{name: ..., args: {...}}`` (None: ``fixed``); ``where`` is the
    field an error names (``train.weighting``)."""
    if spec is None:
        spec = {"name": "fixed"}
    if isinstance(spec, str):
        spec = {"name": spec}
    unknown = set(spec) - {"name", "args"}
    if unknown:
        raise PlanError(f"weighting takes name and args, not {sorted(unknown)}")
    cls = get_weighting(str(spec.get("name", "fixed")))
    args = {} if spec.get("args") is None else spec["args"]
    if not isinstance(args, Mapping):
        raise PlanError(f"weighting {cls.weighting_name!r}: args must be a mapping, got {args!r}")
    # the signature is the schema: a typo or a string where a number goes names itself here,
    # before any study exists, instead of failing every trial's first step
    where = f"{where}.args"
    check_call(cls, args, where, PlanError, given=("tasks", "seed"))
    if issubclass(cls, GradientWeighting):
        check_call(cls.aggregator_from, args, where, PlanError)
        if cls.torchjd:  # what aggregator_from passes on goes to TorchJD's class: its signature too
            import inspect

            ours = inspect.signature(cls.aggregator_from).parameters.values()
            defaults = {p.name: p.default for p in ours if p.default is not p.empty}  # CAGrad's c = 0.5
            check_call(torchjd_aggregator(cls.torchjd), {**defaults, **args}, where, PlanError, given=("n_tasks",))
    try:
        return cls(list(tasks), seed=seed, **dict(args))
    except PlanError:
        raise
    except (TypeError, ValueError) as e:
        raise PlanError(f"bad arguments for weighting {cls.weighting_name!r}: {e}") from None
