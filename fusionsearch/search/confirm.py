"""Confirmation: the search's winners and the baselines trained again over fresh seeds, and what
may honestly be concluded from them.

A search ranks plans by one run each, and on small budgets the seed alone moves Delta-m by
points; the best of N runs is partly the luckiest. So after the search the ``confirm.top`` best
searched plans and every baseline are trained again with ``confirm.seeds`` fresh seeds, as trials
of the same study (``confirm:LABEL`` with a ``seed``), which makes the phase resumable and shared
by workers like any other. Each seed's Delta-m is against the single-task networks trained with
that same seed (same data order, same start), so plans are compared *paired*: per plan the mean
with a Student t interval over seeds, and against the best baseline a paired t test whose 95%
interval of the mean difference must lie above zero before a plan is said to beat it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from scipy import stats

from fusionsearch.search.jobs import ConfirmRun, Job
from fusionsearch.search.records import TrialRecord

__all__ = [
    "Interval",
    "PairedTest",
    "ConfirmedPlan",
    "Confirmation",
    "t_interval",
    "paired_test",
    "confirm_seeds",
    "search_winners",
    "queue_confirmation",
    "summarize",
    "LEVEL",
]

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with its two-sided Student t interval (``low``/``high`` are NaN for n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:+.2f} (1 seed, no interval)"
        return f"{self.mean:+.2f} ± {self.half_width:.2f}"


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan)


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and ``level`` confidence interval of the mean, t distribution with n - 1 degrees of
    freedom (few seeds: a normal interval would be far too narrow)."""
    if not values:
        raise ValueError("no values")
    n = len(values)
    mean, sd = _mean_sd(values)
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class PairedTest:
    """Plan minus reference, paired over the seeds both ran: mean difference, its interval and the
    two-sided p value. ``beats``: the whole interval lies above zero."""

    diff: Interval
    p_value: float

    @property
    def beats(self) -> bool:
        return self.diff.n >= 2 and self.diff.low > 0

    def __str__(self) -> str:
        if self.diff.n < 2:
            return f"{self.diff.mean:+.2f} (1 seed: no test)"
        p = "p < 0.001" if self.p_value < 1e-3 else f"p = {self.p_value:.3f}"
        return f"{self.diff.mean:+.2f} [{self.diff.low:+.2f}, {self.diff.high:+.2f}], {p}"


def paired_test(plan: Mapping[int, float], reference: Mapping[int, float], level: float = LEVEL) -> PairedTest:
    """Paired t test of ``plan`` against ``reference`` (seed -> Delta-m) over their common seeds."""
    seeds = sorted(set(plan) & set(reference))
    if not seeds:
        raise ValueError("the two plans share no seed")
    d = [plan[s] - reference[s] for s in seeds]
    mean, sd = _mean_sd(d)
    if len(d) < 2:
        p = math.nan
    elif sd == 0:  # identical differences: no spread, the sign decides
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(len(d))), len(d) - 1))
    iv = t_interval(d, level)
    return PairedTest(iv, p)


def confirm_seeds(study_seed: int, n: int) -> list[int]:
    """``n`` fresh seeds: never the search's own, the same for every plan (paired)."""
    return [study_seed * 1000 + 1 + i for i in range(n)]


def _signature(t: FrozenTrial) -> str:
    r = TrialRecord(t)
    return json.dumps([r.plan, r.loss_weights, r.base_lr, r.column_init, r.partial_loss], sort_keys=True)


def _delta_m(t: FrozenTrial) -> float | None:
    v = TrialRecord(t).delta_m
    return float(v) if v is not None and math.isfinite(v) else None


def search_winners(study: optuna.Study, top: int, per: str | None = None) -> list[FrozenTrial]:
    """The ``top`` best complete searched trials by Delta-m, one per distinct plan; with ``per``
    (a search parameter, e.g. ``weighting``), the ``top`` best for each of its values, so that
    each value gets a confirmed Delta-m of its own."""
    if per is not None:
        groups: dict[str, list[FrozenTrial]] = {}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if Job.of(t).sampled and _delta_m(t) is not None and per in t.params:
                groups.setdefault(str(t.params[per]), []).append(t)
        picked = [w for trials in groups.values() for w in _best_distinct(trials, top)]
        return sorted(picked, key=lambda t: (-(_delta_m(t) or 0.0), t.number))
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if Job.of(t).sampled and _delta_m(t) is not None
    ]
    return _best_distinct(done, top)


def _best_distinct(done: list[FrozenTrial], top: int) -> list[FrozenTrial]:
    done = sorted(done, key=lambda t: (-(_delta_m(t) or 0.0), t.number))
    out: list[FrozenTrial] = []
    seen: set[str] = set()
    for t in done:
        sig = _signature(t)
        if sig not in seen:
            seen.add(sig)
            out.append(t)
        if len(out) == top:
            break
    return out


def queue_confirmation(
    study: optuna.Study, baselines: Sequence[str], top: int, seeds: Sequence[int], per: str | None = None
) -> int:
    """Queue the confirmation trials that are not there yet; returns how many were added.

    Call once the search has finished, under the storage's lock (``search.prepare_confirmation``
    takes it): the winners are then final, so calling it again (a resumed run, a second command)
    adds nothing. The first
    seed's trials keep their networks (``keep_net``): the plan's representative for ``best``.
    """
    plans: list[tuple[str, int | None]] = [(b, None) for b in baselines]
    plans += [(f"trial {t.number}", t.number) for t in search_winners(study, top, per)]
    before = len(study.get_trials(deepcopy=False))
    for i, seed in enumerate(seeds):
        for label, source in plans:
            ConfirmRun(label, seed, source, keep_net=i == 0).enqueue(study)
    return len(study.get_trials(deepcopy=False)) - before


@dataclass
class ConfirmedPlan:
    """One plan's confirmation: Delta-m per seed, its interval, and the test against the best baseline."""

    label: str
    baseline: bool
    plan: dict[str, Any] | None
    by_seed: dict[int, float]
    trials: dict[int, int]  # seed -> trial number
    search_delta_m: float | None = None
    interval: Interval | None = None
    test: PairedTest | None = None
    vs_single: PairedTest | None = None  # every plan but single, paired against the single-task nets
    net_trial: int | None = None  # the trial whose network represents the plan
    partial_loss: str | None = None  # a searched train.partial_loss rule (None: the recipe's)

    @property
    def mean(self) -> float:
        return self.interval.mean if self.interval is not None else math.nan


@dataclass
class Confirmation:
    """Every confirmed plan, best mean first, and the best baseline they were tested against."""

    plans: list[ConfirmedPlan] = field(default_factory=list)
    best_baseline: str | None = None
    pending: int = 0  # confirmation trials still queued or running

    @property
    def best(self) -> ConfirmedPlan | None:
        done = [p for p in self.plans if p.interval is not None]
        return done[0] if done else None

    def searched(self) -> list[ConfirmedPlan]:
        """The confirmed searched plans (not the baselines), best mean first."""
        return [p for p in self.plans if not p.baseline and p.interval is not None]

    def verdict(self) -> str:
        """The plain-words conclusion the study ends with."""
        if not self.plans:
            return "no confirmation was run: the ranking above is one run per plan"
        if self.pending:
            return f"confirmation unfinished ({self.pending} trials left): run the same command again"
        base = self.best_baseline or "single"
        lead = self._baseline_lead(base)
        searched = self.searched()
        if not searched:
            return f"{lead}no searched plan was confirmed; the best baseline is {base}"
        n = max(p.interval.n for p in searched if p.interval)
        winners = [p for p in searched if p.test is not None and p.test.beats]
        if winners:
            w = max(winners, key=lambda p: p.test.diff.mean if p.test else 0.0)
            return (
                f"{lead}{w.label} beats the {base} baseline by {w.test}"
                f" (paired over {w.test.diff.n} seeds, 95% interval above 0)"  # type: ignore[union-attr]
            )
        top = max(searched, key=lambda p: p.mean)
        detail = f"best searched: {top.label}, {top.test}" if top.test is not None else f"best: {top.label}"
        return f"{lead}no searched plan beats the {base} baseline at this budget ({detail}; {n} seeds)"

    def _baseline_lead(self, base: str) -> str:
        """When a multi-task plan beats the single-task nets, that is a finding of its own (sharing
        helps here), said first: the best baseline if it does, else the plan (a searched one, or
        another baseline) that beats single by the most, although the best baseline's mean is higher
        and its own interval does not clear single (a wide one)."""
        if base == "single":
            return ""
        best = next((p for p in self.plans if p.label == base), None)
        if best is None or best.vs_single is None or not best.vs_single.beats:
            beating = [p for p in self.plans if p.vs_single is not None and p.vs_single.beats]
            if not beating:
                return ""
            best = max(beating, key=lambda p: p.vs_single.diff.mean)  # type: ignore[union-attr]
        vs = best.vs_single
        return f"{best.label} beats single by {vs} (paired over {vs.diff.n} seeds); "  # type: ignore[union-attr]


def summarize(study: optuna.Study) -> Confirmation:
    """Collect the confirmation trials of ``study`` into per-plan intervals and paired tests."""
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    plans: dict[str, ConfirmedPlan] = {}
    pending = 0
    for t in trials:
        job = Job.of(t)
        if not isinstance(job, ConfirmRun):
            continue
        if t.state in (TrialState.WAITING, TrialState.RUNNING):
            pending += 1
        source = by_number.get(job.source if job.source is not None else -1)
        record = TrialRecord(t)
        p = plans.setdefault(
            job.label,
            ConfirmedPlan(
                label=job.label,
                baseline=job.source is None,
                plan=record.plan or (TrialRecord(source).plan if source else None),
                by_seed={},
                trials={},
                search_delta_m=_delta_m(source) if source is not None else None,
                partial_loss=record.partial_loss,
            ),
        )
        dm = _delta_m(t)
        if t.state == TrialState.COMPLETE and dm is not None:
            p.by_seed[job.seed] = dm
            p.trials[job.seed] = t.number
            if record.model_artifact and (p.net_trial is None or job.keep_net):
                p.net_trial = t.number
            if p.plan is None:
                p.plan = record.plan
    out = Confirmation(pending=pending)
    for p in plans.values():
        if p.by_seed:
            p.interval = t_interval([p.by_seed[s] for s in sorted(p.by_seed)])
    bases = [p for p in plans.values() if p.baseline and p.interval is not None]
    if bases:
        best = max(bases, key=lambda p: (p.mean, p.label == "single"))
        out.best_baseline = best.label
        for p in plans.values():
            if p.interval is not None and p is not best and set(p.by_seed) & set(best.by_seed):
                p.test = paired_test(p.by_seed, best.by_seed)  # no common seed (failures): no test
    single = plans.get("single")
    if single is not None and single.interval is not None:
        for p in plans.values():
            if p.interval is not None and p is not single and set(p.by_seed) & set(single.by_seed):
                p.vs_single = paired_test(p.by_seed, single.by_seed)
    out.plans = sorted(plans.values(), key=lambda p: -p.mean if p.interval is not None else math.inf)
    return out
