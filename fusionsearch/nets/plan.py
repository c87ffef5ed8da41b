"""The plan of a stitched net and what the net remembers of its build: ``StitchPlan`` (where fusion
goes and what it is), ``StitchMeta`` (what ``save`` writes beside the weights) and ``parse_tasks``.

Cut here because the plan is plain data: the search, the recipes and the saved file all make or
read plans without needing the net, its build or torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fusionsearch.errors import PlanError
from fusionsearch.validation import did_you_mean

__all__ = ["StitchPlan", "StitchMeta", "parse_tasks"]


@dataclass
class StitchPlan:
    """Where fusion goes and what it is.

    Args:
        at: cut points (boundary names, module paths or node names) that get a fusion unit; for
            columns of different backbones an entry may list one name per column.
        unit: the registered unit used at every point (``nddr``, ``cross_stitch``, ``sluice``).
        unit_args: keyword arguments of that unit (``init``, ``lr_mult``, ``weight_decay``, ...).
        per_point: overrides for single points: ``{"layer3": {"unit": "cross_stitch", ...}}``.
        shared_prefix: a cut point up to which all tasks share one trunk (None: K full columns).
        shortcut: NDDR-Shortcut head inputs (every fusion output resized, concatenated, 1x1 conv).
        shortcut_channels: channels of the shortcut's output (default: the last stage's).
        shortcut_init: ``xavier`` (the official conv-BN-ReLU) or ``identity`` (a bare 1x1 conv
            that starts as the identity: the net reproduces the backbone at init).
        shortcut_resize: ``tf_legacy`` (the official code's TF 1.4 resize), ``align_corners``
            (the PyTorch port's) or ``half_pixel`` (torch's default).
        head_input_lr_mult: the learning-rate multiplier of the head inputs (the shortcut, or
            sluice's beta mix); None: the main unit's ``lr_mult`` when the plan names one (the
            official code's one ``--nddr-mult``), else the optimiser's default for that module
            (``conventions.fusion_lr_mult("shortcut" | "sluice_beta", optimizer)``).
    """

    at: list[Any] = field(default_factory=list)
    unit: str = "nddr"
    unit_args: dict[str, Any] = field(default_factory=dict)
    per_point: dict[str, dict[str, Any]] = field(default_factory=dict)
    shared_prefix: str | None = None
    shortcut: bool = False
    shortcut_channels: int | None = None
    shortcut_init: str = "xavier"
    shortcut_resize: str = "tf_legacy"
    head_input_lr_mult: float | None = None

    def unit_for(self, point: str) -> tuple[str, dict[str, Any]]:
        """The unit at ``point`` and its arguments: the plan's, or what ``per_point`` sets there."""
        args = dict(self.unit_args)
        override = dict(self.per_point.get(point, {}))
        name = override.pop("unit", self.unit)
        if name != self.unit:
            args = {}
        args.update(override)
        if "init" in args and isinstance(args["init"], list):
            args["init"] = tuple(args["init"])
        return name, args

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (JSON, YAML); ``from_dict`` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StitchPlan:
        """A plan from plain data; an unknown field is a ``PlanError`` naming the closest one."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            hint = did_you_mean(sorted(unknown)[0], list(cls.__dataclass_fields__))
            raise PlanError(f"unknown StitchPlan field(s): {', '.join(sorted(unknown))}{hint}")
        kwargs: dict[str, Any] = {k: (list(v) if k == "at" else v) for k, v in d.items()}
        return cls(**kwargs)


@dataclass
class StitchMeta:
    """What a stitched net remembers of how it was built (``save`` writes it, ``load`` reads it)."""

    backbones: list[str]  # timm names, or the modules' class names
    backbone_is_module: list[bool]  # built from an nn.Module: ``load`` needs it again
    input_size: list[int]  # (C, H, W) the graph was traced at
    create_kwargs: dict[str, Any]  # timm.create_model arguments
    leaf: list[str] | dict[str, list[str]]  # tracer leaves given by name: every column's, or per task
    last_fusion_is_output: bool  # the last unit sits at the backbone's output
    column_params: int  # parameters of one column (the single backbone)
    task_args: dict[str, dict[str, Any]]


def parse_tasks(tasks: Mapping[str, int] | Sequence[str] | str) -> dict[str, int]:
    """``{"seg": 40, "normal": 3}``, ``["seg:40", "normal:3"]`` or ``"seg:40,normal:3"``."""
    out: dict[str, int] = {}
    if isinstance(tasks, Mapping):
        out = {str(k): int(v) for k, v in tasks.items()}
    else:
        items = tasks.split(",") if isinstance(tasks, str) else list(tasks)
        for item in items:
            name, sep, size = item.strip().partition(":")
            if not sep or not size.strip().isdigit():
                raise PlanError(f"task {item!r} needs its output size, e.g. seg:40 or normal:3")
            if name in out:
                raise PlanError(f"task {name!r} is named more than once: each task is one column")
            out[name] = int(size)
    if len(out) < 1:
        raise PlanError("at least one task is needed")
    for name, n in out.items():
        if n < 1:
            raise PlanError(f"task {name!r} needs a positive output size, got {n}")
    return out
