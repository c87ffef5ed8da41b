"""The stitched multi-task network: K columns of backbone segments with fusion units between them.

A forward pass runs segment s of every column, then the unit at the cut point that ends segment
s (if any), then segment s+1, ... . Columns are deep copies of the traced backbone's segments (or
of different backbones whose resolutions match); a shared prefix is one trunk that all tasks use
before the columns begin (the cross-stitch paper's "split" architectures).

Cut here because the module is what training, the search and the report hold at run time: the
forward pass and the optimiser's parameter groups, apart from how ``builder.build`` assembles it
and how ``io`` saves and loads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fusionsearch.graph.points import CutPoint
from fusionsearch.graph.segments import Segment
from fusionsearch.nets.conventions import fusion_lr_mult
from fusionsearch.nets.fusion import FusionUnit
from fusionsearch.nets.plan import StitchMeta, StitchPlan

__all__ = ["StitchedNet"]


class StitchedNet(nn.Module):
    """K task columns with fusion units; ``forward(x)`` returns ``{task: prediction}``."""

    def __init__(
        self,
        tasks: dict[str, int],
        plan: StitchPlan,
        points: list[CutPoint],
        shared: nn.ModuleList,
        columns: nn.ModuleList,
        units: nn.ModuleDict,
        head_inputs: nn.ModuleList | None,
        heads: nn.ModuleDict,
        meta: StitchMeta,
    ) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        self.plan = plan
        self.points = points
        # typed as what they hold (nn.ModuleList's items are plain Modules to a type checker)
        self.shared: Any
        self.columns: Any
        self.units: Any
        self.shared = shared
        self.columns = columns
        self.units = units
        self.head_inputs = head_inputs
        self.heads = heads
        self.meta = meta
        # the columns hold trained single-task weights and every unit is new (``build`` with
        # column_weights): ``bn_init: auto`` then calibrates the units' BatchNorm (``calibration``)
        self.columns_trained = False
        # ``train.checkpoint: segments`` (set by ``fit``): in training with gradients, each segment
        # of the trunk and of every column keeps only its input and recomputes its activations in
        # the backward pass (``_checkpointed_step``); off, the forward pass is the plain one
        self.checkpoint_segments = False

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def _features(self, x: Tensor) -> tuple[list[Tensor], list[list[Tensor]], Tensor]:
        """Last-stage features per task, every fusion output per task, and the units' extra loss."""
        k = len(self.tasks)
        extra = x.new_zeros(())
        h, side = x, ()
        n_shared = len(self.shared)
        ck = self.checkpoint_segments and self.training and torch.is_grad_enabled()
        for seg in self.shared:
            h, side = _checkpointed_step(seg, h, side) if ck else seg.step(h, side)
        feats, sides = [h] * k, [side] * k
        fused: list[list[Tensor]] = [[] for _ in range(k)]
        for j in range(len(self.columns[0])):
            for t in range(k):
                seg = self.columns[t][j]
                feats[t], sides[t] = _checkpointed_step(seg, feats[t], sides[t]) if ck else seg.step(feats[t], sides[t])
            key = str(n_shared + j)
            if key in self.units:
                feats, e = self.units[key](feats)
                if e is not None:
                    extra = extra + e
                for t in range(k):
                    fused[t].append(feats[t])
        return feats, fused, extra

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Each task's last-stage features (after the last fusion unit, before any head input)."""
        return self._features(x)[0]

    def head_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """What each task's head receives (shortcut / sluice mixing applied) and the extra loss."""
        feats, fused, extra = self._features(x)
        if self.head_inputs is None:
            return feats, extra
        ends_at_output = self.meta.last_fusion_is_output
        outs = [m(f if ends_at_output else [*f, last]) for m, f, last in zip(self.head_inputs, fused, feats)]
        return outs, extra

    def forward(self, x: Tensor, return_extra: bool = False) -> Any:
        """The predictions ``{task: tensor}``; with ``return_extra``, also the units' extra losses."""
        feats, extra = self.head_features(x)
        size = (x.shape[-2], x.shape[-1])
        preds = {t: self.heads[t](f, size) for t, f in zip(self.tasks, feats)}
        return (preds, extra) if return_extra else preds

    def fusion_units(self) -> dict[str, FusionUnit]:
        """The units by cut point name."""
        names = [p.name for p in self.points]
        return {names[int(k)]: u for k, u in self.units.items()}

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The parameters of the columns and of the shared trunk."""
        return _unique([*self.shared.parameters(), *self.columns.parameters()])

    def fusion_parameters(self) -> list[nn.Parameter]:
        """The parameters of the fusion units and of the heads' inputs."""
        extra = list(self.head_inputs.parameters()) if self.head_inputs is not None else []
        return _unique([*self.units.parameters(), *extra])

    def param_groups(
        self, base_lr: float, weight_decay: float = 0.0, head_lr_mult: float = 1.0, optimizer: str = "sgd"
    ) -> list[dict[str, Any]]:
        """Optimizer groups: backbone (base lr), each fusion group (lr x its multiplier, its own
        weight decay), shortcut/sluice head inputs, heads (lr x ``head_lr_mult``). Every
        trainable parameter is in exactly one group; each group has a ``name``. A fusion group
        whose plan named no multiplier gets ``conventions.fusion_lr_mult(..., optimizer)``: the
        papers' x100 under SGD, its translation under AdamW."""
        groups: list[dict[str, Any]] = [
            {
                "name": "backbone",
                "params": self.backbone_parameters(),
                "lr": base_lr,
                "weight_decay": weight_decay,
            }
        ]
        groups += self._unit_groups(base_lr, weight_decay, optimizer)
        groups += self._head_input_groups(base_lr, weight_decay, optimizer)
        groups.append(
            {
                "name": "heads",
                "params": [p for p in self.heads.parameters() if p.requires_grad],
                "lr": base_lr * head_lr_mult,
                "weight_decay": weight_decay,
            }
        )
        seen = [id(p) for g in groups for p in g["params"]]
        assert len(seen) == len(set(seen)), "a parameter is in two groups"
        return groups

    def _unit_groups(self, base_lr: float, weight_decay: float, optimizer: str) -> list[dict[str, Any]]:
        """One group per non-empty parameter group of each fusion unit, by cut point."""
        groups: list[dict[str, Any]] = []
        for point, unit in self.fusion_units().items():
            for g in unit.param_groups():
                if g["params"]:
                    wd = weight_decay if g["weight_decay"] is None else g["weight_decay"]
                    mult = _mult_of(g["lr_mult"], unit.unit_name, optimizer, type(unit).default_lr_mult)
                    groups.append(
                        {
                            "name": f"fusion:{point}:{g['tag']}",
                            "params": g["params"],
                            "lr": base_lr * mult,
                            "lr_mult": mult,
                            "weight_decay": wd,
                        }
                    )
        return groups

    def _head_input_groups(self, base_lr: float, weight_decay: float, optimizer: str) -> list[dict[str, Any]]:
        """The head inputs' groups, per task: the shortcut's own groups (in the fusion lr group,
        BN undecayed), or one group of the module's parameters (sluice's beta mix)."""
        groups: list[dict[str, Any]] = []
        if self.head_inputs is None:
            return groups
        head_inputs: list[Any] = list(self.head_inputs)
        for task, m in zip(self.tasks, head_inputs):
            component = str(getattr(m, "lr_component", self.plan.unit))
            if hasattr(m, "param_groups"):  # the shortcut: in the fusion lr group, BN undecayed
                for g in m.param_groups():
                    if g["params"]:
                        mult = _mult_of(g["lr_mult"], component, optimizer)
                        groups.append(
                            {
                                "name": f"head_input:{task}:{g['tag']}",
                                "params": g["params"],
                                "lr": base_lr * mult,
                                "lr_mult": mult,
                                "weight_decay": weight_decay if g["weight_decay"] is None else g["weight_decay"],
                            }
                        )
                continue
            mult = _mult_of(getattr(m, "lr_mult", None), component, optimizer)
            groups.append(
                {
                    "name": f"head_input:{task}",
                    "params": [p for p in m.parameters() if p.requires_grad],
                    "lr": base_lr * mult,
                    "lr_mult": mult,
                    "weight_decay": weight_decay,
                }
            )
        return groups

    def describe(self) -> dict[str, Any]:
        """Plan, backbones and parameter counts (what ``inspect --model`` prints)."""
        count = lambda ps: sum(p.numel() for p in ps)
        return {
            "backbones": self.meta.backbones,
            "tasks": dict(self.tasks),
            "plan": self.plan.to_dict(),
            "points": [
                {"name": p.name, "shape": list(p.shape), "layout": p.layout, "unit": self._unit_name(i)}
                for i, p in enumerate(self.points)
            ],
            "params": {
                "total": count(self.parameters()),
                "backbone": count(self.backbone_parameters()),
                "fusion": count(self.fusion_parameters()),
                "heads": count(self.heads.parameters()),
                "single_column": self.meta.column_params,
            },
        }

    def _unit_name(self, i: int) -> str | None:
        unit = self.units[str(i)] if str(i) in self.units else None  # noqa: SIM401 - ModuleDict has no get
        return None if unit is None else unit.unit_name


def _checkpointed_step(seg: Segment, x: Tensor, side: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
    """``seg.step(x, side)`` under torch's non-reentrant activation checkpoint: the same values and
    gradients (the RNG state is replayed, so dropout and stochastic depth draw the same masks)."""
    return checkpoint(
        seg.step, x, side, use_reentrant=False, context_fn=lambda: (nullcontext(), _running_stats_kept(seg))
    )


@contextmanager
def _running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Around the backward pass's recomputation: the module's BatchNorm running statistics (and
    batch counts) as they were before it. The recomputed forward runs in train mode and would
    update them a second time (torch leaves this to the caller: pytorch/pytorch#96136), so a
    checkpointed step would end with other statistics than the plain one; restored, they are
    the same bit for bit."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
    kept = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None] for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, saved in zip(norms, kept):
                now = [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
                for b, v in zip(now, saved):
                    b.copy_(v)


def _unique(params: list[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen and p.requires_grad:
            seen.add(id(p))
            out.append(p)
    return out


def _mult_of(value: float | None, component: str, optimizer: str, sgd_default: float = 100.0) -> float:
    """A group's learning-rate multiplier: the one the plan named, else the optimiser's default
    for the component (``conventions.fusion_lr_mult``)."""
    return float(value) if value is not None else fusion_lr_mult(component, optimizer, sgd_default)
