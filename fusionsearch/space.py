"""The search space: what a trial decides and how its choices become a StitchPlan.

Every choice has a fixed name and a fixed set of values for the whole study (TPE and NSGA-II model
each parameter by name), so choices that depend on each other are resolved after sampling: fusion
points at or before the shared prefix are dropped, and the unit arguments of a point apply only
when a unit is placed there. Defaults and ranges come from the papers' ablations: NDDR-CNN
Table 1 (init alpha in 0.5..1, best near 0.9) and Table 2 (fusion lr multiplier 1..1000, best
x100); the cross-stitch paper's init (0.9, 0.1) and lr x10^2..10^3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from .errors import PlanError
from .fusion import FUSION_UNITS
from .stitch import StitchPlan

__all__ = ["SearchSpace", "Sampled", "NONE"]

NONE = "none"


@dataclass
class Sampled:
    """One trial's decisions."""

    plan: StitchPlan
    loss_weights: dict[str, float]
    base_lr: float | None


@dataclass
class SearchSpace:
    """Ranges of a recipe's ``search`` section; ``fixed`` pins any parameter by its name."""

    points: Any = "boundaries"
    units: list[str] = field(default_factory=lambda: [NONE, "nddr", "cross_stitch", "sluice"])
    shortcut: list[bool] = field(default_factory=lambda: [False, True])
    shared_prefix: bool = True
    init_alpha: tuple[float, float] = (0.5, 1.0)
    lr_mult: tuple[float, float] = (1.0, 1000.0)
    fusion_weight_decay: tuple[float, float] = (1e-6, 1e-2)
    base_lr: tuple[float, float] | None = None
    loss_weights: dict[str, tuple[float, float]] = field(default_factory=dict)
    unit_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            known = ", ".join(cls.__dataclass_fields__)
            raise PlanError(f"unknown search field(s) {sorted(unknown)}; known: {known}")
        space = cls(**dict(d))
        for u in space.units:
            if u != NONE and u not in FUSION_UNITS:
                raise PlanError(f"search units name {u!r}; registered units: {', '.join(sorted(FUSION_UNITS))}, none")
        for name in ("init_alpha", "lr_mult", "fusion_weight_decay", "base_lr"):
            r = getattr(space, name)
            if r is not None and not (isinstance(r, (list, tuple)) and len(r) == 2 and 0 < r[0] <= r[1]):
                raise PlanError(f"search {name} must be a [low, high] range with 0 < low <= high, got {r!r}")
        return space

    def _pick(self, trial: optuna.Trial, name: str, suggest: Any) -> Any:
        if name in self.fixed:
            value = self.fixed[name]
            trial.set_user_attr(f"fixed:{name}", value)
            return value
        return suggest()

    def _range(self, trial: optuna.Trial, name: str, r: Sequence[float], log: bool = True) -> float:
        lo, hi = float(r[0]), float(r[1])
        if lo == hi:
            return lo
        return float(self._pick(trial, name, lambda: trial.suggest_float(name, lo, hi, log=log)))

    def sample(self, trial: optuna.Trial, points: Sequence[str], k: int) -> Sampled:
        """Draw a plan for ``k`` tasks over the candidate ``points`` (in network order)."""
        units = {
            p: self._pick(trial, f"unit@{p}", lambda p=p: trial.suggest_categorical(f"unit@{p}", self.units))
            for p in points
        }
        prefix = NONE
        if self.shared_prefix:
            prefix = self._pick(
                trial, "shared_prefix", lambda: trial.suggest_categorical("shared_prefix", [NONE, *points[:-1]])
            )
        if prefix != NONE:  # the trunk is one network up to the prefix: nothing to fuse there
            cut = list(points).index(prefix)
            units = {p: (u if i > cut else NONE) for i, (p, u) in enumerate(units.items())}
        at = [p for p, u in units.items() if u != NONE]
        shortcut = bool(self._pick(trial, "shortcut", lambda: trial.suggest_categorical("shortcut", self.shortcut)))
        common: dict[str, Any] = {}
        if at:
            alpha = self._range(trial, "init_alpha", self.init_alpha, log=False)
            common = {
                "init": (alpha, 1.0 - alpha),
                "lr_mult": self._range(trial, "lr_mult", self.lr_mult),
                "weight_decay": self._range(trial, "fusion_weight_decay", self.fusion_weight_decay),
            }
        chosen = [units[p] for p in at]
        main = max(set(chosen), key=chosen.count) if chosen else "nddr"
        per_point = {p: {"unit": units[p], **self.unit_args.get(units[p], {})} for p in at if units[p] != main}
        plan = StitchPlan(
            at=at,
            unit=main,
            unit_args={**common, **self.unit_args.get(main, {})},
            per_point={p: {**common, **args} for p, args in per_point.items()},
            shared_prefix=None if prefix == NONE else prefix,
            shortcut=shortcut and bool(at),
        )
        weights = {t: self._range(trial, f"loss_weight@{t}", r) for t, r in self.loss_weights.items()}
        base_lr = self._range(trial, "base_lr", self.base_lr) if self.base_lr is not None else None
        if k < 2 and at:
            raise PlanError("fusion needs at least 2 tasks")
        return Sampled(plan, weights, base_lr)
