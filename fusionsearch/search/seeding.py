"""Samplers whose draws follow the study, not the process: a resumed study draws what an
uninterrupted one drew.

An Optuna sampler seeded once per process replays, after a restart, the draws it already used
for the trials that finished before the interruption. ``JobSeeded`` instead gives every trial a
fresh inner sampler (TPE, NSGA-II, random: any ``BaseSampler``) seeded from the study seed and
the trial's *job*: its number in the queue, which a copy queued again after an accident shares
with the trial it copies (Optuna's retry bookkeeping, ``RetryFailedTrialCallback.retry_history``).
A parameter drawn on its own (``sample_independent``) gets a seed of its own as well, so a copy
that already holds some of its parameters draws the rest as the first attempt did. With the same
history, a job's draws are then the same whichever process, worker or attempt makes them.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

__all__ = ["JobSeeded", "job_number", "draw_seed"]


def job_number(study: optuna.Study, trial: FrozenTrial) -> int:
    """The trial's place in the queue: its own number, or the first attempt's for a copy."""
    history = trial.system_attrs.get("retry_history")  # RetryFailedTrialCallback.retry_history's key
    return int(history[0]) if history else trial.number


def draw_seed(seed: int, *keys: int | str) -> int:
    """A 32-bit seed mixed from the study seed and ``keys`` (numbers, or names by their CRC-32)
    by NumPy's ``SeedSequence``: nearby inputs give unrelated streams."""
    entropy = [seed, *(k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class JobSeeded(BaseSampler):
    """A sampler that draws each trial with a fresh ``make(seed)``, seeded from ``seed`` and the
    trial's job (``job(study, trial)``, ``job_number`` by default); see the module docstring.

    Example::

        sampler = JobSeeded(lambda s: optuna.samplers.TPESampler(seed=s), seed=0)
        study = optuna.create_study(sampler=sampler)
    """

    def __init__(
        self,
        make: Callable[[int], BaseSampler],
        seed: int,
        job: Callable[[optuna.Study, FrozenTrial], int] = job_number,
    ) -> None:
        self._make, self._seed, self._job = make, seed, job
        self._inner: dict[int, BaseSampler] = {}  # by trial number, from before_trial to after_trial
        self._lock = threading.Lock()

    def _for(self, study: optuna.Study, trial: FrozenTrial) -> BaseSampler:
        with self._lock:
            inner = self._inner.get(trial.number)
            if inner is None:  # a trial told in another process than the one that drew it
                inner = self._inner[trial.number] = self._make(draw_seed(self._seed, self._job(study, trial)))
            return inner

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        with self._lock:
            self._inner.pop(trial.number, None)
        self._for(study, trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        own = self._make(draw_seed(self._seed, self._job(study, trial), param_name))
        return own.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        inner = self._for(study, trial)
        with self._lock:
            self._inner.pop(trial.number, None)
        inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to reseed: every draw is a function of the study seed and the job."""
