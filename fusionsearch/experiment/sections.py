"""The sections that are the recipe's own: ``study``, ``confirm``, ``compare``, ``paper`` and the
fields of ``data`` that every data set reads. The other sections are typed by the classes they
become (``train``: ``TrainConfig``; ``search``: ``SearchSpace``; ``delta_m``: ``DeltaM``).

Each is a dataclass whose annotations are its schema: ``validation.check_fields`` checks a
section's YAML against them (by pydantic) before the dataclass is built from it, so a value is
held as written (a timeout of ``30`` stays the whole number the study stores) and read by
attribute (``recipe.defaults.trials``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["StudySection", "ConfirmSection", "CompareSection", "PaperSection", "DataSection", "MAX_SEED"]

# the confirmation's training seeds are the study seed x 1000 + 1..1000, below numpy's 2^32
MAX_SEED = (2**32 - 1) // 1000 - 1000


@dataclass
class StudySection:
    """The recipe's ``study`` section: how ``fusionsearch run`` searches by default."""

    trials: int | Literal["grid"] = 8  # sampled trials after the baselines; grid: every grid point
    timeout: float | None = None  # seconds after which no trial starts
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    pruner: Literal["successive_halving", "hyperband", "median", "none"] = "hyperband"
    objectives: list[str] = field(default_factory=lambda: ["delta_m"])
    seed: int = 0


@dataclass
class ConfirmSection:
    """The recipe's ``confirm`` section: after the search, the ``top`` best searched plans (the
    ``top`` best for each value of the search parameter ``per``, e.g. ``weighting``) and every
    baseline are trained again with ``seeds`` fresh seeds (``seeds: 0`` skips it)."""

    top: int = 2
    seeds: int = 3
    per: str | None = None


@dataclass
class CompareSection:
    """The recipe's ``compare`` section: the rows and columns of ``fusionsearch compare``."""

    rows: dict[str, str] = field(default_factory=dict)  # paper row -> baseline that trains it
    columns: dict[str, list[str]] = field(default_factory=dict)  # task -> metrics shown
    grid_rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # paper row -> grid point
    search_trials: int = 4


@dataclass
class PaperSection:
    """The recipe's ``paper`` section: the published table that ``compare`` sets beside ours."""

    table: str = ""
    rows: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # row -> task -> metric -> value


@dataclass
class DataSection:
    """The fields of ``data`` that every data set reads; others go to its constructor."""

    name: str = "synthetic"
    size: int | tuple[int, int] = 128  # square side, or [height, width]
    train_length: int | None = None
    val_length: int | None = None
    # task -> share in (0, 1], list of item ids, or id file: the training images that keep the
    # task's label (``data.partial``); validation stays fully labelled
    labelled: dict[str, Any] | None = None
