"""A weighting method from a recipe's spec (a name or ``{name: ..., args: {...}}``), its arguments
checked against the method's declared ``arguments`` (``arguments``: types and bounds) before any
study exists; a plugin's method that declares none is checked against its signature (and, for
TorchJD's aggregators, TorchJD's).

Cut from the contract (``base``) because it knows both levels: a gradient-level method's
arguments also go to its aggregator.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from fusionsearch.errors import PlanError
from fusionsearch.tasks.weighting.arguments import TaskVector, check_arguments
from fusionsearch.tasks.weighting.base import Weighting, get_weighting
from fusionsearch.tasks.weighting.gradient import GradientWeighting, torchjd_aggregator
from fusionsearch.validation import check_call

__all__ = ["make_weighting", "check_weighting"]


def check_weighting(
    spec: str | Mapping[str, Any] | None, tasks: Sequence[str] | None = None, where: str = "weighting"
) -> tuple[type[Weighting], dict[str, Any]]:
    """The method and its arguments from a name or ``{name: ..., args: {...}}`` (None: ``fixed``),
    every argument checked: a typo, a string where a number goes, a value out of its bounds or a
    per-task vector of the wrong length (``tasks``, when known) names ``where.args.ARG`` here,
    before any study exists, instead of failing every trial's first step inside torch."""
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
    where = f"{where}.args"
    if cls.arguments is not None:
        check_arguments(cls.weighting_name, cls.arguments, args, where, tasks)
        return cls, dict(args)
    check_call(cls, args, where, PlanError, given=("tasks", "seed"))  # undeclared: the signature is the schema
    if issubclass(cls, GradientWeighting):
        check_call(cls.aggregator_from, args, where, PlanError)
        if cls.torchjd:  # what aggregator_from passes on goes to TorchJD's class: its signature too
            ours = inspect.signature(cls.aggregator_from).parameters.values()
            defaults = {p.name: p.default for p in ours if p.default is not p.empty}  # CAGrad's c = 0.5
            check_call(torchjd_aggregator(cls.torchjd), {**defaults, **args}, where, PlanError, given=("n_tasks",))
    return cls, dict(args)


def make_weighting(
    spec: str | Mapping[str, Any] | None, tasks: Sequence[str] | None, seed: int = 0, where: str = "weighting"
) -> Weighting:
    """A method from a name or ``{name: ..., args: {...}}`` (None: ``fixed``) for ``tasks``, its
    arguments checked first (``check_weighting``); ``where`` is the field an error names
    (``train.weighting``). ``tasks`` None builds it on stand-in tasks, as many as its per-task
    vectors have, to check what only its constructor can (an optional solver installed)."""
    cls, args = check_weighting(spec, tasks, where)
    if tasks is None:
        vectors = [len(args[k]) for k, a in (cls.arguments or {}).items() if isinstance(a, TaskVector) and k in args]
        tasks = [f"task{i}" for i in range(vectors[0] if vectors else 2)]
    try:
        return cls(list(tasks), seed=seed, **args)
    except PlanError:
        raise
    except (TypeError, ValueError) as e:
        raise PlanError(f"bad arguments for weighting {cls.weighting_name!r}: {e}") from None
