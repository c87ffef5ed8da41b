"""What a run stores on a trial and on its study, read and written by name and type.

A trial's user attributes hold two things: its identity (which job it is: ``jobs.Job.of``) and
what its run recorded (the plan it trained, its metrics, why it failed, its saved nets). This
module is the second: ``TrialRecord`` is a typed view of one trial's results, ``StudyRecord`` of
what a study stores about itself (its recipe, settings, plugins, label counts), and
``ScoredPlanRecord`` of a plan scored on the supernet (a trial of the separate scoring study,
which is a record, not a job: nothing queues it, ``supernet_training.score_plans`` asks and tells
it itself). Outside ``jobs``, nothing else in the package touches ``user_attrs``.

Each field is read as its stored value or None, and written on a live ``optuna.Trial`` (or a
study) with ``record.name = value``; the stored names and values are those of every earlier
version, so an old study reads the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

import optuna
from optuna.trial import FrozenTrial

__all__ = ["Field", "Record", "TrialRecord", "StudyRecord", "ScoredPlanRecord"]

T = TypeVar("T")


class Record:
    """Stored attributes read through ``read`` (each time: a live trial's change by now) and
    written through ``write`` (a trial's or a study's ``set_user_attr``; None where the holder is
    read-only: a finished ``FrozenTrial``)."""

    def __init__(self, read: Callable[[], dict[str, Any]], write: Callable[[str, Any], None] | None = None) -> None:
        self._read, self._write = read, write

    def _get(self, key: str) -> Any:
        return self._read().get(key)

    def _put(self, key: str, value: Any) -> None:
        if self._write is None:
            raise TypeError(f"{type(self).__name__} of a finished trial is read-only: cannot set {key!r}")
        self._write(key, value)


class Field(Generic[T]):
    """One stored attribute of a record, by the name it is declared under (``plan = Field()``)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = name

    @overload
    def __get__(self, record: None, owner: type) -> Field[T]: ...

    @overload
    def __get__(self, record: Record, owner: type) -> T | None: ...

    def __get__(self, record: Record | None, owner: type) -> Field[T] | T | None:
        if record is None:
            return self
        return record._get(self.key)

    def __set__(self, record: Record, value: T) -> None:
        record._put(self.key, value)


Metrics = dict[str, dict[str, float]]


class TrialRecord(Record):
    """What a run recorded on a trial (of the study or of a supernet's scoring study)."""

    def __init__(self, trial: optuna.Trial | FrozenTrial) -> None:
        write = trial.set_user_attr if isinstance(trial, optuna.Trial) else None
        super().__init__(lambda: trial.user_attrs, write)

    # what it trains, written before it trains
    plan = Field[dict[str, Any]]()
    column_init = Field[str]()
    loss_weights = Field[dict[str, float]]()
    base_lr = Field[float]()
    weighting = Field[dict[str, Any]]()
    partial_loss = Field[str]()
    # its progress and results
    step = Field[int]()
    steps = Field[int]()
    metrics = Field[Metrics]()
    evals = Field[list[dict[str, Any]]]()
    delta_m = Field[float]()
    params = Field[int]()
    latency_ms = Field[float]()
    per_category = Field[dict[str, dict[str, float | None]]]()
    # why it failed (``recovery``'s kinds)
    fail_reason = Field[str]()
    fail_kind = Field[str]()
    # its saved files in the artefact store
    model_artifact = Field[str]()
    model_sha256 = Field[str]()
    fusion_artifact = Field[str]()
    # a supernet study: the supernet job's ranking and cost, a slot's place in it
    supernet_top = Field[list[dict[str, Any]]]()
    path_steps = Field[int]()
    supernet_training_path_steps = Field[int]()
    supernet_scored_plans = Field[int]()
    supernet_seconds = Field[float]()
    supernet_rank = Field[int]()
    supernet_score = Field[float]()

    def record_pinned(self, pinned: dict[str, Any]) -> None:
        """The ``search.fixed`` values a sampled trial took instead of a draw (``fixed:NAME``)."""
        for name, value in pinned.items():
            self._put(f"fixed:{name}", value)

    def pinned(self, name: str) -> Any:
        """The pinned value the trial took for parameter ``name``, or None."""
        return self._get(f"fixed:{name}")


class ScoredPlanRecord(TrialRecord):
    """A plan scored on the supernet (a trial of ``supernet_training.scoring_study_name``)."""

    path = Field[dict[str, str]]()
    repeats = Field[bool]()  # a draw of a plan already scored: failed, not scored again
    supernet_scored = Field[bool]()


class StudyRecord(Record):
    """What a study stores about itself, for workers and reports on other machines."""

    def __init__(self, study: optuna.Study) -> None:
        super().__init__(lambda: study.user_attrs, study.set_user_attr)

    recipe = Field[dict[str, Any]]()
    settings = Field[dict[str, Any]]()
    plugins = Field[list[str]]()
    id_files = Field[dict[str, Any]]()
    delta_m_convention = Field[str]()
    category_counts = Field[dict[str, dict[str, int]]]()
    category_names = Field[dict[str, list[str]]]()

    def objectives(self, default: list[str]) -> list[str]:
        """The objectives the study was made with (``default`` for a study that stored none)."""
        return list((self.settings or {}).get("objectives", default))
