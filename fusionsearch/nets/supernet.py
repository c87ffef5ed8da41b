"""A weight-sharing supernet: every candidate fusion unit at every point, over one set of columns.

``SuperNet`` holds the K columns and heads once, and at each point one module per candidate unit
(``none`` is the absence of one). A *path* chooses one candidate per point; ``subnet(path)`` is
that plan as a ``StitchedNet`` that shares the supernet's modules, so it trains, evaluates and
saves like any other plan, and a gradient step on it is a step on the supernet. ``fair_paths``
draws the paths of one step so that every candidate at every point is trained exactly once
(FairNAS's strict fairness): no unit ranks higher only because it was trained more often.

The supernet covers the placement x unit part of a plan: each point's candidates (a point may
offer fewer, e.g. one pinned unit), after the shared prefix its nets were built with, no shortcut.
The unit arguments and the training hyperparameters are searched afterwards, in stand-alone
training of the supernet's best plans (``search.supernet_training``, ``search.supernet_jobs``).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fusionsearch.errors import PlanError
from fusionsearch.nets.net import StitchedNet
from fusionsearch.nets.plan import StitchPlan

__all__ = ["NONE_UNIT", "SuperNet", "plan_of", "recalibrate_batchnorm"]

NONE_UNIT = "none"


class SuperNet(nn.Module):
    """Columns, heads and every candidate unit at every point (see the module docstring).

    Made from one ``StitchedNet`` per candidate unit, each with that unit at every point and
    the same columns and heads (``build_one(unit)``, e.g. ``Experiment.build`` with the warm start
    and one init seed): the first one's columns and heads are kept, and each net gives its units.
    """

    def __init__(
        self,
        build_one: Callable[[str], StitchedNet],
        units: Sequence[str],
        points: Sequence[str],
        choices: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        super().__init__()
        if not points:
            raise PlanError("a supernet needs at least one point to place units at")
        self.point_names = list(points)
        # each point's candidates: ``units`` everywhere, or what ``choices`` leaves it (a pinned unit)
        given = {p: dict.fromkeys(choices[p] if choices is not None else units) for p in self.point_names}
        self.choices = {p: sorted(c, key=lambda u: u != NONE_UNIT) for p, c in given.items()}  # none first
        offered = [u for p in self.point_names for u in self.choices[p]]
        built = [u for u in dict.fromkeys(offered) if u != NONE_UNIT]
        if not built:
            raise PlanError("a supernet needs at least one fusion unit among its choices")
        nets = {u: build_one(u) for u in built}
        first = nets[built[0]]
        self.base = first  # columns, heads and meta; its own units are candidates like the others'
        self.unit_names = [NONE_UNIT, *built] if NONE_UNIT in offered else built
        keys = {p.name: k for k, p in ((k, first.points[int(k)]) for k in first.units)}
        missing = [p for p in points if p not in keys]
        if missing:
            raise PlanError(f"the supernet's nets have no unit at {missing}: points must be the nets' cut points")
        self.keys = {p: keys[p] for p in points}  # point name -> the nets' unit key
        self.candidates: Any  # point key -> unit name -> module (ModuleDict items are plain Modules to mypy)
        self.candidates = nn.ModuleDict(
            {
                self.keys[p]: nn.ModuleDict({u: nets[u].units[self.keys[p]] for u in self.choices[p] if u != NONE_UNIT})
                for p in self.point_names
            }
        )
        self.tasks = dict(first.tasks)

    @property
    def paths_per_step(self) -> int:
        """How many paths ``fair_paths`` draws: the most candidates any point has."""
        return max(len(c) for c in self.choices.values())

    @property
    def plans(self) -> int:
        """How many distinct paths (plans) the supernet holds."""
        return math.prod(len(c) for c in self.choices.values())

    def check_path(self, path: Mapping[str, str]) -> None:
        """Raise a ``PlanError`` unless every point of ``path`` and its unit are candidates here."""
        unknown = sorted(set(path) - set(self.point_names))
        bad = {p: u for p, u in path.items() if p in self.choices and u not in self.choices[p]}
        if unknown or bad:
            raise PlanError(f"path {dict(path)} is not in this supernet (candidates per point {self.choices})")

    def subnet(self, path: Mapping[str, str]) -> StitchedNet:
        """The plan ``path`` (point -> unit or ``none``; points left out have none) as a
        ``StitchedNet`` sharing this supernet's columns, heads and units."""
        self.check_path(path)
        return self._subnet(path)

    def every(self, unit: str) -> StitchedNet:
        """``unit`` at every point that offers it and nothing elsewhere: each candidate module of
        ``unit`` once (what its BatchNorm calibration and its optimiser groups read)."""
        return self._subnet({p: unit for p in self.point_names if unit in self.choices[p]})

    def _subnet(self, path: Mapping[str, str]) -> StitchedNet:
        chosen = {p: u for p, u in path.items() if u != NONE_UNIT}
        units = nn.ModuleDict({self.keys[p]: self.candidates[self.keys[p]][u] for p, u in chosen.items()})
        b = self.base
        plan = dataclasses.replace(plan_of(chosen), shared_prefix=b.plan.shared_prefix)
        net = StitchedNet(b.tasks, plan, b.points, b.shared, b.columns, units, None, b.heads, b.meta)
        net.columns_trained = b.columns_trained
        net.train(self.training)
        return net

    def fair_paths(self, rng: random.Random) -> list[dict[str, str]]:
        """The paths of one training step: at each point an independent shuffle of its candidates,
        the i-th path taking the i-th of each (a point with fewer candidates, a pinned one, starts
        its shuffle again), so each unit at each point is in exactly one path, or in every path."""
        orders = {p: rng.sample(c, len(c)) for p, c in self.choices.items()}
        return [{p: orders[p][i % len(orders[p])] for p in self.point_names} for i in range(self.paths_per_step)]

    def param_groups(
        self, base_lr: float, weight_decay: float = 0.0, head_lr_mult: float = 1.0, optimizer: str = "sgd"
    ) -> list[dict[str, Any]]:
        """The optimiser groups of a ``StitchedNet`` (backbone, heads, each unit's groups at its
        learning-rate multiplier under ``optimizer``), for every candidate unit at once."""
        groups: list[dict[str, Any]] = []
        for u in self.unit_names:
            if u == NONE_UNIT:
                continue
            net = self.every(u)
            for g in net.param_groups(base_lr, weight_decay, head_lr_mult, optimizer):
                if g["name"].startswith("fusion:"):
                    groups.append({**g, "name": f"{g['name']}:{u}"})
                elif not groups or g["name"] not in [h["name"] for h in groups]:
                    groups.append(g)
        return groups


def plan_of(path: Mapping[str, str], unit_args: Mapping[str, Any] | None = None) -> StitchPlan:
    """A path (point -> unit; ``none`` places nothing) as a plan: the first unit as the plan's
    unit, every other point's as an override, each with ``unit_args`` (what a stand-alone trial
    of the path builds)."""
    chosen = {p: u for p, u in path.items() if u != NONE_UNIT}
    if not chosen:
        return StitchPlan(at=[])
    args = dict(unit_args or {})
    main = next(iter(chosen.values()))
    per_point = {p: {"unit": u, **args} for p, u in chosen.items() if u != main}
    return StitchPlan(at=list(chosen), unit=main, unit_args=args, per_point=per_point)


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, batches: Iterable[torch.Tensor], within: nn.Module | None = None) -> int:
    """Recompute every BatchNorm's running statistics of ``net`` on ``batches`` (images): each
    path of a supernet sees other inputs than the mixture of paths it was trained in, so it is
    scored with statistics of its own (the standard fix in one-shot NAS, e.g. SPOS): the mean
    over the batches of each batch's statistics (momentum None), what the net saw in training
    at that batch size; the modes and momenta are restored. ``within``: only the BatchNorm of
    that part of ``net`` (e.g. its fusion units), the others keep theirs. Returns the number of
    images read."""
    bns = [m for m in (within or net).modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    momenta = [bn.momentum for bn in bns]
    modes = {m: m.training for m in net.modules()}
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    net.eval()
    for bn in bns:
        bn.train()
    seen = 0
    try:
        for x in batches:
            net(x)
            seen += int(x.shape[0])
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        for mod, mode in modes.items():
            mod.train(mode)
    return seen
