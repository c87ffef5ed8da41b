"""The arguments a weighting method takes from a recipe, declared with their types and bounds.

A method's ``arguments`` maps each argument to a ``Number``, a ``Choice`` or a ``TaskVector``.
Recipes are written by hand: ``gamma: 1.0e+300``, ``pref_vector: x`` or a preference vector with
one entry too many would otherwise reach torch or TorchJD and fail there, at the first step of
every trial, as an internal error. Declared here, each is refused when the recipe is loaded, with
the field's dotted name. The bounds are the values the method's arithmetic survives in float32
and that mean something for it (a probability below 1, a solver's iterations a step can afford),
not a tuning range: the search draws from ``search_args``, which lie inside them.

Cut from the methods so that ``spec`` checks a recipe's arguments without building anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fusionsearch.errors import PlanError
from fusionsearch.validation import did_you_mean, finite

__all__ = ["Number", "Choice", "TaskVector", "Argument", "check_arguments"]


@dataclass(frozen=True)
class Number:
    """A finite number in [low, high] (``open_low``/``open_high``: the end excluded); ``whole``
    for a count."""

    low: float
    high: float
    open_low: bool = False
    open_high: bool = False
    whole: bool = False

    def check(self, value: Any, where: str, tasks: Sequence[str] | None) -> None:
        lo, hi = ("(" if self.open_low else "["), (")" if self.open_high else "]")
        span = f"{lo}{self.low:g}, {self.high:g}{hi}"
        kind = "a whole number" if self.whole else "a finite number"
        if not finite(value) or (self.whole and not isinstance(value, int)):
            raise PlanError(f"{where} must be {kind} in {span}, got {value!r}")
        below = value <= self.low if self.open_low else value < self.low
        above = value >= self.high if self.open_high else value > self.high
        if below or above:
            raise PlanError(f"{where} must be in {span}, got {value!r}")


@dataclass(frozen=True)
class Choice:
    """One of a few words."""

    values: tuple[str, ...]

    def check(self, value: Any, where: str, tasks: Sequence[str] | None) -> None:
        if value not in self.values:
            raise PlanError(f"{where} must be one of {', '.join(self.values)}, got {value!r}")


@dataclass(frozen=True)
class TaskVector:
    """One number >= 0 per task, in the net's task order, not all 0 (TorchJD's ``pref_vector``).
    Its length is checked where the tasks are known (a recipe's, a net's)."""

    def check(self, value: Any, where: str, tasks: Sequence[str] | None) -> None:
        shape = f"a list of {len(tasks)} numbers >= 0 (one per task: {', '.join(tasks)})" if tasks else None
        ok = isinstance(value, list) and all(finite(v) and v >= 0 for v in value) and math.fsum(value) > 0
        if not ok:
            raise PlanError(f"{where} must be {shape or 'a list of numbers >= 0, one per task'}, not all 0;"
                            f" got {value!r}")  # fmt: skip
        if tasks is not None and len(value) != len(tasks):
            raise PlanError(f"{where} must be {shape}, got {len(value)} numbers")


Argument = Number | Choice | TaskVector


def check_arguments(
    method: str,
    declared: Mapping[str, Argument],
    args: Mapping[str, Any],
    where: str,
    tasks: Sequence[str] | None = None,
) -> None:
    """Raise a ``PlanError`` naming ``where.ARG`` for the first argument of ``args`` that the
    method ``method`` does not declare, or whose value its declaration refuses; ``tasks`` (when
    known) fixes the length of per-task vectors."""
    for key, value in args.items():
        if key not in declared:
            known = list(declared)
            raise PlanError(
                f"unknown argument {where}.{key} of weighting {method!r}{did_you_mean(str(key), known)};"
                f" known: {', '.join(known) or 'none'}"
            )
        declared[key].check(value, f"{where}.{key}", tasks)
