"""A trial has a type: each kind of trial a study queues is a ``Job``, which says what it needs
first, what it trains and from which start, which nets it keeps, how it ranks, queues and is
labelled, and runs itself with the study's ``context.JobContext``. Its identity lives in the
trial's user attributes as every earlier version stored them (old studies resume; the sampler's
seeds follow the queue): ``Job.of(trial)`` reads it, ``job.attrs()`` writes it, no other code
does. A new kind is one class registered with ``@register_job("name")``. The plans scored on the
supernet are no jobs (nothing queues them): ``records.ScoredPlanRecord``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from fusionsearch.errors import JobError
from fusionsearch.experiment.experiment import WARMSTART
from fusionsearch.experiment.space import Sampled
from fusionsearch.registry import Registry
from fusionsearch.search.context import JobContext, Need, Reference
from fusionsearch.search.plan_run import Terms, recorded_plan, train_plan
from fusionsearch.search.records import TrialRecord
from fusionsearch.search.supernet_jobs import supernet_slot, train_and_score

__all__ = ["Job", "PlanJob", "JOBS", "JobError", "register_job", "JOB_KEY", "WarmStartJob", "Baseline", "Slot"]
__all__ += ["ConfirmRun", "SupernetTraining", "WARM_START_NEED", "SUPERNET_NEED", "is_reference"]
__all__ += ["queued_copy"]

REFERENCE = "the single-task reference"
JOB_KEY = "job"  # the user attribute that names a registered kind (extensions only: built-ins keep their own keys)
AnyTrial = optuna.Trial | FrozenTrial


class Job(ABC):
    """One kind of trial. The contract, which ``objective.Objective`` and the reports rely on:

    - identity: ``attrs()`` is what the trial stores to be this job (a registered kind stores
      ``{"job": kind}`` and its dataclass fields, JSON values named unlike any record), and
      ``from_attrs`` reads it back: ``Job.of(t)`` equals the job that queued ``t``. ``params()``
      are its queued parameters (``enqueue``; two equal ones are one trial).
    - ``needs(ctx)``: the trials that must be complete before it is measured (checked before it
      runs; one that failed for good stops the study with its reason).
    - ``run(ctx, trial)``: trains or computes, records what the reports read, and returns the
      study's objective values (0 for each when it is no competitor).
    - its place: ``queue_rank`` (lower first, then by queue order), ``ranked`` (on the search's
      leaderboard), ``sampled`` (a plan of the search), ``reference`` (what its Delta-m is
      against: None, none of its own), ``table_label`` and ``log_label``. Jobs are frozen
      dataclasses, compared by value.
    """

    kind: ClassVar[str] = ""  # its name in ``JOBS`` (set by ``register_job``)
    keys: ClassVar[tuple[str, ...]] = ()  # the attributes its identity may hold (a retry copies them)
    rank: ClassVar[int] = 3  # its ``queue_rank``, where it does not depend on the job
    ranked: ClassVar[bool] = True
    listed: ClassVar[bool] = True  # a row of ``run``'s leaderboard (the confirmation has a table of its own)
    scored: ClassVar[bool] = True  # its values score a plan of its own (the warm start's and the supernet's: 0)

    @staticmethod
    def of(trial: AnyTrial) -> Job:
        """The job of ``trial`` (live or frozen), from its identity attributes."""
        return job_of(trial.user_attrs, trial.number)

    def attrs(self) -> dict[str, Any]:
        return {JOB_KEY: self.kind, **dataclasses.asdict(self)}  # type: ignore[call-overload]  # a dataclass

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Job:
        return cls(**{f.name: attrs[f.name] for f in dataclasses.fields(cls) if f.name in attrs})  # type: ignore[arg-type]

    @classmethod
    def claims(cls, attrs: Mapping[str, Any]) -> bool:
        """Whether ``attrs`` without a ``job`` key are this kind's (the built-ins' own keys)."""
        return False

    def params(self) -> dict[str, Any]:
        return self.attrs()

    def enqueue(self, study: optuna.Study, params: dict[str, Any] | None = None, skip_if_exists: bool = True) -> None:
        """Queue this job in ``study`` (with ``params`` instead of its own: a grid's point)."""
        study.enqueue_trial(
            self.params() if params is None else params, user_attrs=self.attrs(), skip_if_exists=skip_if_exists
        )

    @property
    def sampled(self) -> bool:
        """A plan the search drew (a slot): what the confirmation picks its winners from."""
        return False

    @property
    def queue_rank(self) -> int:
        """Queue order: 0 the warm start all others begin from, 1 the single-task reference, 2 the
        other baselines and the supernet job (before the slots it fills), 3 sampled slots, then
        each confirmation seed's reference (4) before its plans (5)."""
        return self.rank

    @property
    def reference(self) -> Reference | None:
        return Reference()

    @property
    def own_seed(self) -> int | None:
        """The seed it trains with, where it is not the study's (a confirmation's)."""
        return None

    def is_reference_for(self, ref: Reference) -> bool:
        """Whether this job is the single-task run ``ref`` names."""
        return False

    def needs(self, ctx: JobContext) -> list[Need]:
        """The warm start (in a warm-started space) and, where Delta-m is measured against another
        run, that single-task reference."""
        out = [WARM_START_NEED] if ctx.space.warm else []
        ref = self.reference
        if "delta_m" in ctx.settings.objectives and ref is not None and not ref.own:
            out.append(Need(is_reference(ref), REFERENCE))
        return out

    def table_label(self, trial: AnyTrial) -> str:
        return self.kind

    def log_label(self, number: int) -> str:
        return f"trial {number}"

    @abstractmethod
    def run(self, ctx: JobContext, trial: optuna.Trial) -> list[float]: ...


JOBS: Registry[type[Job]] = Registry("job kind", JobError, name_attr="kind")
J = TypeVar("J", bound=type[Job])


def register_job(name: str) -> Callable[[J], J]:
    """Class decorator: register a kind of job under ``name``; its trials store ``{"job": name}``
    and its dataclass fields (its ``keys``, unless it names its own)."""

    def add(cls: J) -> J:
        cls.keys = cls.keys or (JOB_KEY, *(f.name for f in dataclasses.fields(cls)))  # type: ignore[arg-type]
        return JOBS.register(name)(cls)  # type: ignore[return-value]

    return add


def job_of(attrs: Mapping[str, Any], number: int | None = None) -> Job:
    name = attrs.get(JOB_KEY)
    if name is None:
        return next(c for c in JOBS.values() if c.claims(attrs)).from_attrs(attrs)
    if name not in JOBS:
        where = f"trial {number}" if number is not None else "a trial"
        raise JobError(
            f"{where} is a job of kind {name!r}, which no loaded module registers (registered: {', '.join(JOBS)}):"
            " load the plugin that registers it (--plugin)"
        )
    return JOBS[name].from_attrs(attrs)


def queued_copy(t: FrozenTrial, system_attrs: dict[str, Any]) -> FrozenTrial:
    """A WAITING copy of ``t``: its params and its identity (every key a kind's identity may hold,
    as it holds them), not what its run recorded."""
    keys = {k for c in JOBS.values() for k in c.keys}
    attrs = {k: v for k, v in t.user_attrs.items() if k in keys}
    return optuna.create_trial(
        state=TrialState.WAITING,
        params=t.params,
        distributions=t.distributions,
        user_attrs=attrs,
        system_attrs=system_attrs,
    )


def is_reference(ref: Reference) -> Callable[[FrozenTrial], bool]:
    """Picks the trial that is the single-task run ``ref`` names."""
    return lambda t: Job.of(t).is_reference_for(ref)


WARM_START_NEED = Need(lambda t: isinstance(Job.of(t), WarmStartJob), "the warm start (single-task nets)")
SUPERNET_NEED = Need(lambda t: isinstance(Job.of(t), SupernetTraining), "the supernet")


class PlanJob(Job):
    """A job that trains one plan (``plan_run.train_plan``): it says what (``plan``), and the
    terms: whether the pruner may stop it, whether it evaluates at the pruner's rungs, its nets."""

    prunable: ClassVar[bool] = False
    at_rungs: ClassVar[bool] = True

    @abstractmethod
    def plan(self, ctx: JobContext, trial: optuna.Trial) -> Sampled:
        """What it trains: plan, loss weights, base lr, column start (``scratch``/``single``), weighting."""

    def keeps_net(self, ctx: JobContext, trial: optuna.Trial, values: list[float]) -> bool:
        return False

    def run(self, ctx: JobContext, trial: optuna.Trial) -> list[float]:
        what = self.plan(ctx, trial)
        keep = lambda values: self.keeps_net(ctx, trial, values)
        seed = self.own_seed if self.own_seed is not None else ctx.settings.seed
        terms = Terms(seed, self.at_rungs, self.prunable, self.reference, keep)
        return train_plan(ctx, trial, what, terms)


@register_job("confirm")  # the built-in kinds, in the order ``job_of`` asks them
@dataclasses.dataclass(frozen=True)
class ConfirmRun(PlanJob):
    """A trial of the confirmation: a baseline (``label`` its name) or the searched plan of trial
    ``source`` (``label`` "trial N") trained again with a fresh ``seed`` (``single``'s: that seed's
    reference), evaluated at its end only, ranked nowhere (summarised per plan); ``keep_net``: the
    first seed's net is kept (the plan's representative for ``best``)."""

    label: str
    seed: int
    source: int | None = None
    keep_net: bool | None = None
    keys: ClassVar[tuple[str, ...]] = ("confirm", "seed", "source", "keep_net")
    ranked: ClassVar[bool] = False
    listed: ClassVar[bool] = False
    at_rungs: ClassVar[bool] = False

    @classmethod
    def claims(cls, attrs: Mapping[str, Any]) -> bool:
        return attrs.get("confirm") is not None

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Job:
        return cls(attrs["confirm"], int(attrs["seed"]), attrs.get("source"), attrs.get("keep_net"))

    def attrs(self) -> dict[str, Any]:
        keep = {} if self.keep_net is None else {"keep_net": self.keep_net}
        source = {} if self.source is None else {"source": self.source}
        return {"confirm": self.label, "seed": self.seed, **keep, **source}

    def params(self) -> dict[str, Any]:
        return {"confirm": self.label, "seed": self.seed}

    @property
    def queue_rank(self) -> int:
        return 4 if self.label == "single" else 5  # each seed's reference before its plans

    @property
    def reference(self) -> Reference | None:
        return Reference(confirm=True, seed=self.seed, own=self.label == "single")

    @property
    def own_seed(self) -> int | None:
        return self.seed

    def is_reference_for(self, ref: Reference) -> bool:
        return self.label == "single" and ref.confirm and ref.seed == self.seed

    def plan(self, ctx: JobContext, trial: optuna.Trial) -> Sampled:
        if self.source is None:
            return Sampled(ctx.exp.baseline_plan(self.label), {}, None, ctx.space.baseline_init)
        return recorded_plan(ctx, self.source)

    def keeps_net(self, ctx: JobContext, trial: optuna.Trial, values: list[float]) -> bool:
        return bool(self.keep_net)

    def table_label(self, trial: AnyTrial) -> str:
        return f"confirm:{self.label}"

    def log_label(self, number: int) -> str:
        return f"confirm {self.label} (seed {self.seed})"


@register_job("warmstart")
@dataclasses.dataclass(frozen=True)
class WarmStartJob(PlanJob):
    """The single-task nets every warm-started trial begins from, trained from scratch with the
    study seed; every worker reads its net, so it is always kept."""

    replaces: int | None = None  # the warm start whose nets could not be read back
    keys: ClassVar[tuple[str, ...]] = ("baseline", "replaces")
    rank: ClassVar[int] = 0
    ranked: ClassVar[bool] = False
    listed: ClassVar[bool] = False
    scored: ClassVar[bool] = False
    at_rungs: ClassVar[bool] = False

    @classmethod
    def claims(cls, attrs: Mapping[str, Any]) -> bool:
        return attrs.get("baseline") == WARMSTART

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Job:
        return cls(attrs.get("replaces"))

    def attrs(self) -> dict[str, Any]:
        return {"baseline": WARMSTART, **({} if self.replaces is None else {"replaces": self.replaces})}

    def params(self) -> dict[str, Any]:
        return {"baseline": WARMSTART}

    @property
    def reference(self) -> Reference | None:
        return None  # the others' start, not a competitor

    def needs(self, ctx: JobContext) -> list[Need]:
        return []

    def plan(self, ctx: JobContext, trial: optuna.Trial) -> Sampled:
        return Sampled(ctx.exp.baseline_plan("single"), {}, None, "scratch")

    def keeps_net(self, ctx: JobContext, trial: optuna.Trial, values: list[float]) -> bool:
        return True

    def table_label(self, trial: AnyTrial) -> str:
        return f"baseline:{WARMSTART}"

    def log_label(self, number: int) -> str:
        return WARMSTART


@register_job("baseline")
@dataclasses.dataclass(frozen=True)
class Baseline(PlanJob):
    """One of the papers' plans (``experiment.BASELINES``), trained as the recipe says; ``single``
    is the search's single-task reference. With no confirmation its net is kept."""

    name: str
    keys: ClassVar[tuple[str, ...]] = ("baseline",)

    @classmethod
    def claims(cls, attrs: Mapping[str, Any]) -> bool:
        return attrs.get("baseline") is not None

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Job:
        return cls(attrs["baseline"])

    def attrs(self) -> dict[str, Any]:
        return {"baseline": self.name}

    @property
    def queue_rank(self) -> int:
        return 1 if self.name == "single" else 2

    @property
    def reference(self) -> Reference | None:
        return Reference(own=self.name == "single")

    def is_reference_for(self, ref: Reference) -> bool:
        return self.name == "single" and not ref.confirm

    def plan(self, ctx: JobContext, trial: optuna.Trial) -> Sampled:
        return Sampled(ctx.exp.baseline_plan(self.name), {}, None, ctx.space.baseline_init)

    def keeps_net(self, ctx: JobContext, trial: optuna.Trial, values: list[float]) -> bool:
        return ctx.settings.confirm_seeds == 0

    def table_label(self, trial: AnyTrial) -> str:
        return f"baseline:{self.name}"

    def log_label(self, number: int) -> str:
        return self.name


@register_job("supernet")
@dataclasses.dataclass(frozen=True)
class SupernetTraining(Job):
    """A supernet study's one training for placement x unit (``supernet_jobs.train_and_score``):
    its ranking fills the slots. No plan of its own: its value is 0, ranked nowhere."""

    stage: str = "train"
    keys: ClassVar[tuple[str, ...]] = ("supernet",)
    rank: ClassVar[int] = 2
    ranked: ClassVar[bool] = False
    scored: ClassVar[bool] = False

    @classmethod
    def claims(cls, attrs: Mapping[str, Any]) -> bool:
        return attrs.get("supernet") is not None

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Job:
        return cls(attrs["supernet"])

    def attrs(self) -> dict[str, Any]:
        return {"supernet": self.stage}

    def run(self, ctx: JobContext, trial: optuna.Trial) -> list[float]:
        return train_and_score(ctx, trial)  # scored against the search's reference (``Job.needs``)

    def table_label(self, trial: AnyTrial) -> str:
        return "supernet"


@register_job("slot")
@dataclasses.dataclass(frozen=True)
class Slot(PlanJob):
    """A sampled plan of the search: drawn by the study's sampler (a grid's point queued with it),
    or in a supernet study the supernet's ``slot``-th best plan with the rest drawn. With no
    confirmation, the net of each one that is the best run so far is kept. ``slot`` None: a
    trial with no identity (asked by hand, not queued), drawn alike but no slot of the search."""

    slot: int | None = None
    keys: ClassVar[tuple[str, ...]] = ("slot",)
    prunable: ClassVar[bool] = True

    @classmethod
    def claims(cls, attrs: Mapping[str, Any]) -> bool:
        return True  # asked last: what no other kind claims

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Job:
        return cls(attrs.get("slot"))

    def attrs(self) -> dict[str, Any]:
        return {} if self.slot is None else {"slot": self.slot}

    @property
    def sampled(self) -> bool:
        return self.slot is not None

    @staticmethod
    def search_needs(ctx: JobContext) -> list[Need]:
        """What every sampled plan needs: the warm start, the supernet, the search's reference;
        when one failed for good no trial of the study can be measured (``Dependencies.blocked``)."""
        out = [WARM_START_NEED] if ctx.space.warm else []
        out += [SUPERNET_NEED] if ctx.space.mode == "supernet" else []
        return out + ([Need(is_reference(Reference()), REFERENCE)] if "delta_m" in ctx.settings.objectives else [])

    def needs(self, ctx: JobContext) -> list[Need]:
        return self.search_needs(ctx) if self.slot is not None else super().needs(ctx)

    def plan(self, ctx: JobContext, trial: optuna.Trial) -> Sampled:
        optimizer = ctx.recipe.training.optimizer
        draw = lambda space: space.sample(trial, ctx.exp.points(space.points), len(ctx.recipe.tasks), optimizer)
        if ctx.space.mode != "supernet" or self.slot is None:
            return draw(ctx.space)
        top = TrialRecord(ctx.deps.wait_for(SUPERNET_NEED.match, SUPERNET_NEED.what)).supernet_top or []
        return supernet_slot(ctx.space, self.slot, top, trial, draw)

    def keeps_net(self, ctx: JobContext, trial: optuna.Trial, values: list[float]) -> bool:
        return self.slot is not None and ctx.settings.confirm_seeds == 0 and _best_so_far(trial, values[0])

    def table_label(self, trial: AnyTrial) -> str:
        rank = TrialRecord(trial).supernet_rank
        return "search" if rank is None else f"search (supernet #{rank})"  # the supernet's k-th best plan


def _best_so_far(trial: optuna.Trial, value: float) -> bool:
    """``value`` (the first objective) is at least as good as every complete searched trial's."""
    sign = 1 if trial.study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    done = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    others = [sign * t.values[0] for t in done if Job.of(t).sampled]
    return not others or sign * value >= max(others)
