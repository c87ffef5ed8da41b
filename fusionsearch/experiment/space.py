"""The search space: what a trial decides and how its choices become a StitchPlan.

Every choice has a fixed name and a fixed set of values for the whole study (TPE and NSGA-II model
each parameter by name). Choices that depend on each other are drawn define-by-run: the shared
prefix first, then a unit only for the points after it, and the unit arguments only when some
unit is placed, so no trial carries a parameter that did nothing (the sampler and the importances
would learn from it). Defaults and ranges come from the papers' ablations: NDDR-CNN
Table 1 (init alpha in 0.5..1, best near 0.9) and Table 2 (fusion lr multiplier 1..1000, best
x100); the cross-stitch paper's init (0.9, 0.1) and lr x10^2..10^3. Those multipliers are SGD
settings, so by default the search draws ``lr_scale``, a factor on ``conventions.fusion_lr_mult``
of each placed unit under the recipe's optimiser (0.01..10: Table 2's 1..1000 under SGD), and
the range means the same under SGD and AdamW; an explicit ``lr_mult`` range is kept as written.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fusionsearch.errors import PlanError
from fusionsearch.nets.conventions import fusion_lr_mult
from fusionsearch.nets.fusion import FUSION_UNITS, get_fusion
from fusionsearch.nets.plan import StitchPlan
from fusionsearch.tasks.weighting import get_weighting
from fusionsearch.train.partial import PARTIAL_LOSSES
from fusionsearch.validation import check_call, did_you_mean, finite

if TYPE_CHECKING:
    import optuna

__all__ = ["SearchSpace", "Sampled", "NONE", "COLUMN_INITS", "MODES", "parse_init"]

NONE = "none"
COLUMN_INITS = ("single", "scratch")
# how placement x unit is searched: one training per sampled plan, or one weight-sharing supernet
# whose best plans are then trained stand-alone with their hyperparameters searched (search.supernet)
MODES = ("trials", "supernet")


@dataclass
class Sampled:
    """One trial's decisions."""

    plan: StitchPlan
    loss_weights: dict[str, float]
    base_lr: float | None
    column_init: str = "single"
    weighting: dict[str, Any] | None = None  # {name, args}: None keeps the recipe's train.weighting
    pinned: dict[str, Any] = field(default_factory=dict)  # the ``fixed`` values it took, by parameter name
    partial_loss: str | None = None  # train.partial_loss: None keeps the recipe's


@dataclass
class SearchSpace:
    """Ranges of a recipe's ``search`` section; ``fixed`` pins any parameter by its name."""

    points: Any = "boundaries"
    units: list[str] = field(default_factory=lambda: [NONE, *FUSION_UNITS])  # every registered unit
    shortcut: list[bool] = field(default_factory=lambda: [False, True])
    shared_prefix: bool = True
    init_alpha: tuple[float, float] = (0.5, 1.0)
    # the fusion lr multiplier as written (None: drawn as lr_scale x the optimiser's default)
    lr_mult: tuple[float, float] | None = None
    lr_scale: tuple[float, float] = (0.01, 10.0)  # x conventions.fusion_lr_mult: Table 2's 1..1000 under SGD
    fusion_weight_decay: tuple[float, float] = (1e-6, 1e-2)
    base_lr: tuple[float, float] | None = None
    loss_weights: dict[str, tuple[float, float]] = field(default_factory=dict)
    unit_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    # choice lists instead of ranges, for grids over the papers' ablation values
    init: list[Any] | None = None  # e.g. [[1, 0], [0.9, 0.1], xavier] (NDDR-CNN Table 1)
    lr_mult_choices: list[float] | None = None  # e.g. [1, 10, 100, 1000] (Table 2)
    # where columns start: "single" (the study's trained single-task nets, then finetune_steps
    # steps; NDDR-CNN Table 3's best) or "scratch" (the backbone's own weights, the full budget);
    # a list makes it a searched choice (the Table 3 grid), its first value the baselines' start
    column_init: str | list[str] = "single"
    finetune_steps: int | None = None  # steps of a warm-started trial (default: a quarter of train.steps)
    # a warm-started trial's learning rate is base_lr x this: restarting trained nets at the peak
    # rate of a fresh run undoes much of their training in the first steps (AdamW especially)
    finetune_lr_mult: float = 1.0
    # task weighting methods to choose from (``weighting.WEIGHTINGS``), each with its own
    # ``search_args`` drawn conditionally; None keeps the recipe's train.weighting. Baselines
    # always train as the recipe says (the papers' fixed weights)
    weighting: list[str] | None = None
    # partial labels' loss rules to choose from (``train.partial``: batch, labelled); None keeps the
    # recipe's train.partial_loss, as the baselines always do
    partial_loss: list[str] | None = None
    mode: str = "trials"  # MODES
    supernet_steps: int | None = None  # its optimiser steps (None: one warm start's worth of path steps)
    supernet_plans: int = 40  # plans scored on the trained supernet (TPE over placement x unit)
    # steps each scored plan's copy trains before it is evaluated (0: BatchNorm recalibration only);
    # how well each count ranks plans: README, The supernet mode (benchmarks/supernet_rank.py)
    supernet_score_steps: int = 10

    def grid(self, points: Sequence[str]) -> dict[str, list[Any]]:
        """The categorical choices as a grid for Optuna's GridSampler. Every choice that is not
        fixed must be a list; a free float range cannot be gridded, so that is an error."""
        g: dict[str, list[Any]] = {}
        free = [p for p in points if f"unit@{p}" not in self.fixed]
        for p in free:
            g[f"unit@{p}"] = list(self.units)
        if self.shared_prefix and "shared_prefix" not in self.fixed:
            g["shared_prefix"] = [NONE, *points[:-1]]
        if "shortcut" not in self.fixed:
            g["shortcut"] = list(self.shortcut)
        for name, values in (
            ("init", [_init_label(v) for v in self.init] if self.init else None),
            ("lr_mult", self.lr_mult_choices),
            ("column_init", self.column_init if isinstance(self.column_init, list) else None),
            ("weighting", self.weighting),
            ("partial_loss", self.partial_loss),
        ):
            if values is not None and name not in self.fixed:
                g[name] = list(values)
        ranges = {
            "init_alpha": None if self.init else self.init_alpha,
            "fusion_weight_decay": self.fusion_weight_decay,
            "base_lr": self.base_lr,
            **{f"loss_weight@{t}": r for t, r in self.loss_weights.items()},
        }
        if not self.lr_mult_choices:
            ranges["lr_mult" if self.lr_mult is not None else "lr_scale"] = self.lr_mult or self.lr_scale
        for name, r in ranges.items():
            if r is not None and name not in self.fixed and float(r[0]) != float(r[1]):
                raise PlanError(
                    f"a grid search needs fixed values: {name} is a range {list(r)}; fix it or give choices"
                )
        return g

    def grid_points(self, points: Sequence[str]) -> list[dict[str, Any]]:
        """Every combination of the choice lists over the candidate ``points``, in a fixed order,
        each as the parameters a trial carries (``effective``). A grid study queues each with all
        its values fixed, so N workers run each point exactly once (Optuna's GridSampler picks
        points at random and may repeat one under parallel workers)."""
        grid = self.grid(points)
        names = list(grid)
        out: list[dict[str, Any]] = []
        for values in itertools.product(*(grid[n] for n in names)):
            point = self.effective(dict(zip(names, values)), points)
            if point not in out:  # choices define-by-run never reads make no new trial
                out.append(point)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        """The search space of a recipe's ``search`` section; an unknown key is an error."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            known = ", ".join(cls.__dataclass_fields__)
            hint = did_you_mean(sorted(unknown)[0], list(cls.__dataclass_fields__))
            raise PlanError(f"unknown search field(s) {sorted(unknown)}{hint}; known: {known}")
        space = cls(**dict(d))
        space._check_choices()
        for name in ("init_alpha", "lr_mult", "lr_scale", "fusion_weight_decay", "base_lr"):
            r = getattr(space, name)
            ok = isinstance(r, (list, tuple)) and len(r) == 2 and 0 <= r[0] <= r[1] and (r[0] > 0 or r[0] == r[1])
            if r is not None and not ok:
                raise PlanError(
                    f"search {name} must be a [low, high] range with 0 < low <= high (log scale), or [v, v] to fix"
                    f" it, got {r!r}"
                )
        if isinstance(space.weighting, str):
            raise PlanError(f"search.weighting must be a list of method names, got {space.weighting!r}")
        for w in space.weighting or []:
            try:
                get_weighting(w)
            except PlanError as e:
                raise PlanError(f"search.weighting: {e}") from None
        rules = space.partial_loss
        if rules is not None and (not rules or any(r not in PARTIAL_LOSSES for r in rules)):
            raise PlanError(f"search.partial_loss must be a list of {', '.join(PARTIAL_LOSSES)}, got {rules!r}")
        inits = space.column_init if isinstance(space.column_init, list) else [space.column_init]
        bad = [v for v in inits if v not in COLUMN_INITS]
        if bad or not inits:
            raise PlanError(f"search column_init must be single, scratch or a list of them, got {space.column_init!r}")
        f = space.finetune_steps
        if f is not None and (not isinstance(f, int) or isinstance(f, bool) or f < 1):
            raise PlanError(f"search finetune_steps must be a whole number >= 1, got {f!r}")
        m = space.finetune_lr_mult
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0:
            raise PlanError(f"search finetune_lr_mult must be a number > 0, got {m!r}")
        space._check_supernet()
        return space

    def _check_supernet(self) -> None:
        if self.mode not in MODES:
            raise PlanError(f"search.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name, low in (("supernet_steps", 1), ("supernet_plans", 1), ("supernet_score_steps", 0)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise PlanError(f"search {name} must be a whole number >= {low}, got {v!r}")
        if self.mode == "supernet" and (not self.warm or [u for u in self.units if u != NONE] == []):
            raise PlanError(
                "search.mode supernet starts from the warm start and needs a fusion unit to place:"
                " column_init must include single and units a registered unit"
            )

    def _check_choices(self) -> None:
        """Every choice list, each unit's arguments and each loss-weight range, checked before any
        study exists (a bad one used to fail every sampled trial, leaving a study of failures)."""
        for name in ("units", "shortcut"):
            if not getattr(self, name):
                raise PlanError(f"search.{name} is empty: give at least one choice")
        for u in self.units:
            if u != NONE and u not in FUSION_UNITS:
                raise PlanError(f"search units name {u!r}; registered units: {', '.join(sorted(FUSION_UNITS))}, none")
        for u, args in self.unit_args.items():
            check_call(get_fusion(u), args, f"search.unit_args.{u}", PlanError, given=("channels", "layout"))
        for v in self.init or []:
            if v != "xavier" and not (isinstance(v, (list, tuple)) and len(v) == 2 and all(finite(x) for x in v)):
                raise PlanError(f"search.init choices must be [alpha, beta] pairs of numbers or xavier, got {v!r}")
        for v in self.lr_mult_choices or []:
            if not (finite(v) and v > 0):
                raise PlanError(f"search.lr_mult_choices must be numbers > 0, got {v!r}")
        if not 0 <= self.init_alpha[0] <= self.init_alpha[1] <= 1:
            raise PlanError(f"search.init_alpha must be a [low, high] range within [0, 1], got {self.init_alpha!r}")
        for t, r in self.loss_weights.items():
            if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(finite(x) for x in r) and 0 < r[0] <= r[1]):
                raise PlanError(f"search.loss_weights.{t} must be a [low, high] range with 0 < low <= high, got {r!r}")
        if self.weighting is not None and len(set(self.weighting)) < len(self.weighting):
            raise PlanError(f"search.weighting names a method twice: {self.weighting}")

    def check_fixed(self, points: Sequence[str]) -> None:
        """``fixed`` pins parameters this space draws, to values it could draw (a typo in a name
        would pin nothing; a unit that does not exist would fail every trial)."""
        names = self.parameter_names(points)
        for key, value in self.fixed.items():
            if key not in names:
                raise PlanError(f"search.fixed.{key} is not a parameter of this search space{did_you_mean(key, names)}")
            if key.startswith("unit@") and value != NONE and value not in FUSION_UNITS:
                raise PlanError(
                    f"search.fixed.{key} names {value!r}; registered units: {', '.join(sorted(FUSION_UNITS))}, none"
                )
            if key == "shared_prefix" and value != NONE and value not in points[:-1]:
                raise PlanError(
                    f"search.fixed.shared_prefix must be none or one of {', '.join(points[:-1])}, got {value!r}"
                )

    def effective(self, params: Mapping[str, Any], points: Sequence[str]) -> dict[str, Any]:
        """``params`` without the choices ``sample`` would not read: units at or before the shared
        prefix, and the unit arguments when no unit is placed."""
        prefix = params.get("shared_prefix", self.fixed.get("shared_prefix", NONE))
        dead = set(points[: list(points).index(prefix) + 1]) if prefix in points else set()
        out = {k: v for k, v in params.items() if not (k.startswith("unit@") and k[5:] in dead)}
        units = [out.get(f"unit@{p}", self.fixed.get(f"unit@{p}")) for p in points if p not in dead]
        if all(u in (None, NONE) for u in units):
            for k in ("init", "init_alpha", "lr_mult", "lr_scale", "fusion_weight_decay"):
                out.pop(k, None)
        return out

    def parameter_names(self, points: Sequence[str]) -> list[str]:
        """Every parameter a trial of this space can carry (``sample``'s names), fixed ones
        included: what ``confirm.per`` may name."""
        names = [f"unit@{p}" for p in points] + ["shortcut"]
        if self.shared_prefix:
            names.insert(0, "shared_prefix")
        names.append("init" if self.init else "init_alpha")
        names.append("lr_mult" if self.lr_mult_choices or self.lr_mult is not None else "lr_scale")
        names.append("fusion_weight_decay")
        names += [f"loss_weight@{t}" for t in self.loss_weights]
        if self.base_lr is not None:
            names.append("base_lr")
        if isinstance(self.column_init, list):
            names.append("column_init")
        for w in self.weighting or []:
            names.append("weighting")
            names += [f"{a}@{w}" for a in get_weighting(w).search_args]
        if self.partial_loss:
            names.append("partial_loss")
        return list(dict.fromkeys(names))

    @property
    def baseline_init(self) -> str:
        """Where the baselines' columns start: the study-wide choice, or a searched list's first value."""
        return self.column_init[0] if isinstance(self.column_init, list) else self.column_init

    @property
    def warm(self) -> bool:
        """Whether any trial starts from the trained single-task nets (the study trains them first)."""
        inits = self.column_init if isinstance(self.column_init, list) else [self.column_init]
        return "single" in inits

    def finetune(self, steps: int) -> int:
        """Steps of a warm-started trial when the full budget is ``steps``."""
        return self.finetune_steps or max(1, steps // 4)

    def _pick(self, trial: optuna.Trial, name: str, suggest: Any) -> Any:
        if name in self.fixed:
            value = self.fixed[name]
            self._pinned[name] = value  # the search records it with the trial (``Sampled.pinned``)
            return value
        return suggest()

    def _range(self, trial: optuna.Trial, name: str, r: Sequence[float], log: bool = True) -> float:
        lo, hi = float(r[0]), float(r[1])
        if lo == hi:
            return lo
        return float(self._pick(trial, name, lambda: trial.suggest_float(name, lo, hi, log=log)))

    def _lr_mults(self, trial: optuna.Trial, units: Sequence[str], optimizer: str) -> dict[str, float]:
        """Each placed unit's multiplier (and the shortcut's, under ``"shortcut"``): as the recipe
        writes it, or one drawn ``lr_scale`` times each one's default under ``optimizer``."""
        if self.lr_mult_choices:
            choices = [float(v) for v in self.lr_mult_choices]
            value = float(self._pick(trial, "lr_mult", lambda: trial.suggest_categorical("lr_mult", choices)))
            return {u: value for u in [*units, "shortcut", "sluice_beta"]}
        if self.lr_mult is not None:
            value = self._range(trial, "lr_mult", self.lr_mult)
            return {u: value for u in [*units, "shortcut", "sluice_beta"]}
        scale = self._range(trial, "lr_scale", self.lr_scale)
        out = {u: scale * fusion_lr_mult(u, optimizer, get_fusion(u).default_lr_mult) for u in units}
        for head_input in ("shortcut", "sluice_beta"):
            out[head_input] = scale * fusion_lr_mult(head_input, optimizer)
        return out

    def sample(self, trial: optuna.Trial, points: Sequence[str], k: int, optimizer: str = "sgd") -> Sampled:
        """Draw a plan for ``k`` tasks over the candidate ``points`` (in network order);
        ``optimizer`` (the recipe's) is what a drawn ``lr_scale`` is relative to.

        The draws keep one order, since a seeded sampler's draws follow the order of the suggest
        calls (the same seed samples the same plans): prefix, units, shortcut, the placed units'
        arguments, loss weights, base lr, column start, weighting, partial-label loss rule."""
        self._pinned: dict[str, Any] = {}
        prefix, units = self._draw_units(trial, points)
        at = [p for p, u in units.items() if u != NONE]
        shortcut = bool(self._pick(trial, "shortcut", lambda: trial.suggest_categorical("shortcut", self.shortcut)))
        common, lr_mults = self._draw_unit_args(trial, sorted({units[p] for p in at}), optimizer) if at else ({}, {})
        plan = self._plan(units, at, common, lr_mults, prefix, shortcut)
        weights = {t: self._range(trial, f"loss_weight@{t}", r) for t, r in self.loss_weights.items()}
        base_lr = self._range(trial, "base_lr", self.base_lr) if self.base_lr is not None else None
        if k < 2 and at:
            raise PlanError("fusion needs at least 2 tasks")
        column_init = self.column_init
        if isinstance(column_init, list):
            starts: list[str] = list(column_init)
            column_init = self._pick(trial, "column_init", lambda: trial.suggest_categorical("column_init", starts))
        weighting = self._draw_weighting(trial)
        if column_init == "single" and plan.shortcut:
            # a warm-started plan starts as the single-task nets it is paired with: the shortcut's
            # identity start, not the official Xavier one (which would scramble the trained heads' input)
            plan.shortcut_init = "identity"
        rules = list(self.partial_loss or [])
        pick = lambda: trial.suggest_categorical("partial_loss", rules)
        rule = self._pick(trial, "partial_loss", pick) if rules else None
        return Sampled(plan, weights, base_lr, str(column_init), weighting, self._pinned, rule)

    def _draw_units(self, trial: optuna.Trial, points: Sequence[str]) -> tuple[str, dict[str, str]]:
        """The shared prefix, then a unit (or none) at each point after it."""
        prefix = NONE
        if self.shared_prefix:
            prefix = self._pick(
                trial, "shared_prefix", lambda: trial.suggest_categorical("shared_prefix", [NONE, *points[:-1]])
            )
        # the trunk is one network up to the prefix: nothing to fuse there, so nothing is drawn
        after = list(points)[list(points).index(prefix) + 1 :] if prefix != NONE else list(points)
        units = {
            p: self._pick(trial, f"unit@{p}", lambda p=p: trial.suggest_categorical(f"unit@{p}", self.units))
            for p in after
        }
        return prefix, units

    def _draw_unit_args(
        self, trial: optuna.Trial, placed: Sequence[str], optimizer: str
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """The arguments every ``placed`` unit shares (init, weight decay) and each one's lr
        multiplier: drawn only when some unit is placed."""
        if self.init:
            labels = [_init_label(v) for v in self.init]
            init: Any = parse_init(self._pick(trial, "init", lambda: trial.suggest_categorical("init", labels)))
        else:
            alpha = self._range(trial, "init_alpha", self.init_alpha, log=False)
            init = (alpha, 1.0 - alpha)
        lr_mults = self._lr_mults(trial, placed, optimizer)
        common = {
            "init": init,
            "weight_decay": self._range(trial, "fusion_weight_decay", self.fusion_weight_decay),
        }
        return common, lr_mults

    def _plan(
        self,
        units: Mapping[str, str],
        at: list[str],
        common: Mapping[str, Any],
        lr_mults: Mapping[str, float],
        prefix: str,
        shortcut: bool,
    ) -> StitchPlan:
        """The drawn choices as a StitchPlan: the most placed unit is the plan's, the others are
        per-point overrides with their own arguments and multiplier."""
        chosen = [units[p] for p in at]
        main = max(chosen, key=chosen.count) if chosen else "nddr"  # a tie: the first placed, in every process
        per_point = {p: {"unit": units[p], **self.unit_args.get(units[p], {})} for p in at if units[p] != main}
        return StitchPlan(
            at=at,
            unit=main,
            unit_args={**common, **({"lr_mult": lr_mults[main]} if at else {}), **self.unit_args.get(main, {})},
            per_point={p: {**common, "lr_mult": lr_mults[str(args["unit"])], **args} for p, args in per_point.items()},
            shared_prefix=None if prefix == NONE else prefix,
            shortcut=shortcut and bool(at),
            head_input_lr_mult=_head_input_mult(lr_mults, shortcut, main) if at else None,
        )

    def _draw_weighting(self, trial: optuna.Trial) -> dict[str, Any] | None:
        """A task weighting method and its own ``search_args``; None keeps the recipe's."""
        if not self.weighting:
            return None
        methods = list(self.weighting)
        name = str(self._pick(trial, "weighting", lambda: trial.suggest_categorical("weighting", methods)))
        cls = get_weighting(name)
        return {
            "name": name,
            "args": {a: self._range(trial, f"{a}@{name}", r) for a, r in cls.search_args.items()},
        }


def _head_input_mult(lr_mults: Mapping[str, float], shortcut: bool, main: str) -> float | None:
    """The head input's multiplier: the shortcut's, sluice's beta mix's, or (None) the unit's."""
    if shortcut:
        return lr_mults["shortcut"]
    return lr_mults["sluice_beta"] if main == "sluice" else None


def _init_label(v: Any) -> str:
    """[0.9, 0.1] -> "0.9,0.1"; "xavier" stays: categorical choices must be plain values."""
    return v if isinstance(v, str) else ",".join(f"{float(x):g}" for x in v)


def parse_init(label: str) -> Any:
    """A drawn or pinned ``init`` label back to what a unit takes: "0.9,0.1" -> (0.9, 0.1)."""
    if label == "xavier":
        return label
    a, b = (float(x) for x in str(label).split(","))
    return (a, b)
