"""Delta-m, the multi-task gain in % over the single-task networks, and its conventions
(``DeltaM``: the mean over tasks or over metrics, every metric or each task's primary one).

It reads the tasks' metric directions and primary metrics, and nothing a task computes: cut from
the task contract (``task``) because it compares finished evaluations, which the search and the
report do, while training never calls it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fusionsearch.errors import PlanError
from fusionsearch.tasks.task import task_class

__all__ = ["delta_m", "DeltaM", "primary_metric"]


@dataclass(frozen=True)
class DeltaM:
    """How Delta-m, the multi-task gain in % over the single-task networks, averages its terms.

    Each term is (-1)^lower_is_better (M_mt - M_st) / M_st * 100 for one metric of one task.

    - ``average="tasks"`` (default): the mean of each task's terms, then the mean over tasks, so
      each task counts once however many metrics it reports (LibMTL's Delta_p,
      ``count_improvement``). ``"metrics"``: the flat mean over every term (Maninis et al.,
      Nash-MTL), where surface normals' five metrics outweigh segmentation's two.
    - ``metrics="all"`` (default): every metric the task reports. ``"primary"``: only each task's
      ``Task.primary`` metric (the survey of Vandenhende et al.); then both averages agree.
    """

    average: str = "tasks"
    metrics: str = "all"

    def __post_init__(self) -> None:
        if self.average not in ("tasks", "metrics"):
            raise PlanError(f"delta_m average must be 'tasks' or 'metrics', got {self.average!r}")
        if self.metrics not in ("all", "primary"):
            raise PlanError(f"delta_m metrics must be 'all' or 'primary', got {self.metrics!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> DeltaM:
        d = dict(d or {})
        unknown = set(d) - {"average", "metrics"}
        if unknown:
            raise PlanError(f"unknown delta_m field(s) {sorted(unknown)}; known: average, metrics")
        return cls(**d)

    def describe(self) -> str:
        """One line for reports and tables: which convention produced the numbers."""
        what = "each task's primary metric" if self.metrics == "primary" else "all metrics"
        if self.metrics == "primary" or self.average == "tasks":
            how = "mean over tasks" + ("" if self.metrics == "primary" else " of each task's mean")
            src = "Vandenhende et al." if self.metrics == "primary" else "LibMTL's Delta_p"
        else:
            how, src = "flat mean over metrics", "Maninis et al. / Nash-MTL"
        return f"Delta-m (%): {how} relative gain over single-task, {what} ({src})"

    def __call__(
        self,
        multi: Mapping[str, Mapping[str, float]],
        single: Mapping[str, Mapping[str, float]],
        directions: Mapping[str, Mapping[str, bool]],
        skip_zero: bool = False,
        types: Mapping[str, str] | None = None,
    ) -> float:
        return delta_m(multi, single, directions, skip_zero, average=self.average, metrics=self.metrics, types=types)


def primary_metric(task: str, types: Mapping[str, str] | None = None) -> str:
    """The metric that stands for ``task`` when Delta-m uses one per task (``types``: the
    registered type of a task whose name is not one, ``task_class``)."""
    cls = task_class(task.split(":")[0], types)
    if not cls.primary:
        raise PlanError(f"task {task!r} declares no primary metric (Task.primary): use delta_m metrics: all")
    return cls.primary


def delta_m(
    multi: Mapping[str, Mapping[str, float]],
    single: Mapping[str, Mapping[str, float]],
    directions: Mapping[str, Mapping[str, bool]],
    skip_zero: bool = False,
    *,
    average: str = "tasks",
    metrics: str = "all",
    types: Mapping[str, str] | None = None,
) -> float:
    """Delta-m: the multi-task network's gain in % over the single-task networks.

    Each term is (-1)^lower_is_better (M_mt - M_st) / M_st * 100 for one metric of one task,
    averaged as ``DeltaM`` says (by default within each task, then over tasks: LibMTL's Delta_p).

    Args:
        multi: the multi-task network's metrics, ``{task: {metric: value}}``.
        single: the single-task networks' metrics, in the same shape.
        directions: ``directions[task][metric]`` is True when higher is better (``Task.metrics``).
        skip_zero: leave out a term whose single-task value is 0 (undefined), instead of raising
            (a search on a tiny budget can have 0% of pixels within 11.25 degrees).
        average: ``"tasks"`` (each task's mean, then the mean over tasks) or ``"metrics"`` (the
            flat mean over every term); see ``DeltaM``.
        metrics: ``"all"`` (every metric a task reports) or ``"primary"`` (``Task.primary`` only).
        types: the registered task type of a task whose name is not one.

    Examples:
        >>> delta_m({"seg": {"miou": 44.0}}, {"seg": {"miou": 40.0}}, {"seg": {"miou": True}})
        10.0
    """
    DeltaM(average, metrics)  # validates
    per_task: list[list[float]] = []
    for task, dirs in directions.items():
        names = [primary_metric(task, types)] if metrics == "primary" else list(dirs)
        terms = []
        for metric in names:
            base = single[task][metric]
            if base == 0:
                if skip_zero:
                    continue
                raise ValueError(f"single-task {task}/{metric} is 0: Delta-m is undefined")
            sign = 1.0 if dirs[metric] else -1.0
            terms.append(sign * (multi[task][metric] - base) / abs(base) * 100)
        if terms:
            per_task.append(terms)
    if not per_task:
        raise ValueError("no metrics to compare")
    if average == "tasks":
        return sum(sum(t) / len(t) for t in per_task) / len(per_task)
    flat = [x for t in per_task for x in t]
    return sum(flat) / len(flat)
