"""The part of a search space a supernet covers, restricted by ``search.fixed`` (issue 34).

A supernet study (``search.mode: supernet``) searches placement x unit on one weight-sharing
supernet and the rest of a plan in stand-alone trainings of its best plans. ``supernet_space``
is the one place that turns the search space and its pins into what the supernet is built from
and draws from: the shared prefix (a pinned one, else none), the points after it, each point's
candidate units (a pinned unit is that point's only candidate), and the values every plan of the
study has in common (a pinned or one-value range), which the supernet's units and training take
too. A pin that a shared supernet cannot express is refused before any work, in one line.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fusionsearch.errors import PlanError
from fusionsearch.experiment.space import SearchSpace, parse_init
from fusionsearch.nets.conventions import fusion_lr_mult
from fusionsearch.nets.fusion import get_fusion
from fusionsearch.nets.supernet import NONE_UNIT

__all__ = ["SupernetSpace", "supernet_space", "common_values"]


@dataclass
class SupernetSpace:
    """What a supernet of a (pinned) search space holds and draws from (``supernet_space``)."""

    prefix: str  # a point, or ``none``: the trunk every plan of the study shares
    choices: dict[str, list[str]]  # each point after the prefix -> its candidate units (``none`` included)
    # what every plan of the study has in common, pinned or a one-value range (None: not common)
    alpha: float | None = None
    init: Any = None  # an ``init`` choice pinned: it replaces alpha
    lr_mult: float | None = None
    lr_scale: float | None = None
    weight_decay: float | None = None
    base_lr: float | None = None
    loss_weights: dict[str, float] = field(default_factory=dict)

    @property
    def plans(self) -> int:
        """How many distinct plans (paths) the supernet can score."""
        return math.prod(len(c) for c in self.choices.values())

    @property
    def units(self) -> list[str]:
        """Every candidate unit at some point, in the space's order (``none`` first when offered)."""
        out = [u for c in self.choices.values() for u in c]
        return sorted(dict.fromkeys(out), key=lambda u: (u != NONE_UNIT, out.index(u)))

    def unit_args(self, unit: str, tasks: int, optimizer: str) -> dict[str, Any]:
        """The arguments ``unit`` gets in the supernet: its init (the pinned one, or alpha on the
        diagonal and the rest shared by the other tasks), and a pinned learning-rate multiplier
        and weight decay; the stand-alone phase draws whatever is not pinned, per plan."""
        args: dict[str, Any] = {}
        if self.init is not None:
            args["init"] = self.init
        elif self.alpha is not None:
            args["init"] = (self.alpha, (1 - self.alpha) / max(1, tasks - 1))
        if self.lr_mult is not None:
            args["lr_mult"] = self.lr_mult
        elif self.lr_scale is not None:
            args["lr_mult"] = self.lr_scale * fusion_lr_mult(unit, optimizer, get_fusion(unit).default_lr_mult)
        if self.weight_decay is not None:
            args["weight_decay"] = self.weight_decay
        return args


def _common(space: SearchSpace, name: str, r: Any) -> float | None:
    """The value every plan has for ``name``: pinned, or a range whose ends agree."""
    if name in space.fixed:
        return float(space.fixed[name])
    if r is not None and float(r[0]) == float(r[1]):
        return float(r[0])
    return None


def supernet_space(space: SearchSpace, points: Sequence[str]) -> SupernetSpace:
    """``space`` over candidate ``points`` (in network order) as its supernet sees it, with every
    pin of ``space.fixed`` applied (see the module docstring); a pin the supernet cannot share is
    a ``PlanError``. Pins of the weighting are the stand-alone phase's alone: the supernet trains
    every path on the tasks' weighted sum, whatever ``train.weighting`` or a pin says."""
    fixed = space.fixed
    if fixed.get("shortcut") is True or list(space.shortcut) == [True]:
        raise PlanError(
            "search.mode supernet cannot pin shortcut: true (the shortcut reads the plan's own fusion outputs,"
            " so no weights are shared across placements): use search.mode trials, or leave shortcut free"
        )
    if fixed.get("column_init", "single") != "single":
        raise PlanError("search.mode supernet starts from the warm start: search.fixed.column_init must be single")
    prefix = str(fixed.get("shared_prefix", NONE_UNIT)) if space.shared_prefix else NONE_UNIT
    after = list(points)[list(points).index(prefix) + 1 :] if prefix != NONE_UNIT else list(points)
    choices = {p: [fixed[f"unit@{p}"]] if f"unit@{p}" in fixed else list(space.units) for p in after}
    if not any(u != NONE_UNIT for c in choices.values() for u in c):
        raise PlanError(
            f"search.fixed leaves the supernet no fusion unit to place (points {', '.join(after) or 'none'}"
            f" after the shared prefix {prefix}): free a unit@POINT or use search.mode trials"
        )
    return dataclasses.replace(common_values(space), prefix=prefix, choices=choices)


def common_values(space: SearchSpace) -> SupernetSpace:
    """What every plan of ``space`` has in common (its points and units left empty)."""
    fixed = space.fixed
    init = parse_init(fixed["init"]) if "init" in fixed else None
    alpha = _common(space, "init_alpha", space.init_alpha)
    lr = "lr_mult" if space.lr_mult_choices or space.lr_mult is not None else "lr_scale"
    lr_range = space.lr_mult_choices and [min(space.lr_mult_choices), max(space.lr_mult_choices)]
    common_lr = _common(space, lr, lr_range or space.lr_mult or space.lr_scale)
    return SupernetSpace(
        prefix=NONE_UNIT,
        choices={},
        alpha=None if space.init else (sum(space.init_alpha) / 2 if alpha is None else alpha),
        init=init,
        lr_mult=common_lr if lr == "lr_mult" else None,
        lr_scale=common_lr if lr == "lr_scale" else None,
        weight_decay=_common(space, "fusion_weight_decay", space.fusion_weight_decay),
        base_lr=_common(space, "base_lr", space.base_lr),
        loss_weights={
            t: v for t, r in space.loss_weights.items() if (v := _common(space, f"loss_weight@{t}", r)) is not None
        },
    )
