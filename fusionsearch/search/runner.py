"""A whole study in one call: prepare it, run the search, then queue and run the confirmation.

``fusionsearch run`` and ``fusionsearch compare`` are this sequence with other settings, and a
Python user gets the same from ``run_study``: the same resumption (the same call continues a
study that Ctrl-C stopped), the same notes and the same refusal of a ``confirm_per`` that no
searched trial has. What it says goes to ``log`` (progress) and ``note`` (what a person should
know: a worker that failed, a journal storage without heartbeats), so that the command line can
send the notes to stderr and a notebook can keep both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from fusionsearch.errors import ArgumentError
from fusionsearch.experiment.experiment import Experiment
from fusionsearch.experiment.recipe import Recipe
from fusionsearch.search.confirm import Confirmation, summarize
from fusionsearch.search.settings import StudySettings
from fusionsearch.search.storage import redact
from fusionsearch.search.study import prepare_confirmation, prepare_study
from fusionsearch.search.worker import run_workers

__all__ = ["StudyRun", "run_study", "study_header"]


@dataclass
class StudyRun:
    """What ``run_study`` ends with.

    Attributes:
        study: the Optuna study, searched and confirmed.
        settings: how it ran.
        confirmation: the confirmation summary; ``confirmation.verdict()`` says the conclusion in words.
        failed_workers: the numbers of the worker processes that exited with an error.
        logs: the folder of the worker processes' logs (None when the trials ran in this process).
    """

    study: optuna.Study
    settings: StudySettings
    confirmation: Confirmation
    failed_workers: list[int]
    logs: Path | None


def _states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def study_header(exp: Experiment) -> list[str]:
    """The lines a study starts with: the fusion learning rates and BatchNorm start its plans get
    (README Conventions), which tasks are labelled on which share of the images, and what the data
    set says of itself (a folder's class counts read from its labels). ``exp``: the study's
    recipe made concrete with the study seed, which draws its labelled images."""
    from fusionsearch.data.partial import describe_labelled
    from fusionsearch.nets.conventions import describe_bn_init, describe_lr_mults

    recipe, cfg = exp.recipe, exp.recipe.training
    lines = [describe_lr_mults(cfg.optimizer), describe_bn_init(cfg.bn_init, cfg.bn_calibration_batches)]
    if recipe.data.get("labelled"):
        lines.append(describe_labelled(exp.datasets()[0]))
    return lines + [f"data: {line}" for line in exp.data_notes()]


def _say_resuming(
    study: optuna.Study, settings: StudySettings, log: Callable[[str], None], note: Callable[[str], None]
) -> None:
    states = _states(study)
    queued, total = states.get("WAITING", 0), sum(states.values())
    if total > queued:
        log(f"resuming: {total - queued} trials there already, {queued} queued")
    running = states.get("RUNNING", 0)
    if running and settings.storage.startswith("journal:"):
        note(
            f"note: {running} trial(s) RUNNING in a journal storage, which has no heartbeats: if their worker"
            " died they stay RUNNING and are not retried (an SQLite or PostgreSQL storage retries them)"
        )


def _confirm(
    study: optuna.Study, settings: StudySettings, log: Callable[[str], None], note: Callable[[str], None]
) -> bool:
    """Queue the confirmation; whether there is any of it left to run."""
    added, why_not = prepare_confirmation(study, settings)
    if why_not is None:
        if not _states(study).get("WAITING"):
            return False
        say = f"confirmation: {added} trials queued" if added else "confirmation: resuming"
        log(f"{say} (top {settings.confirm_top} plans and the baselines, {settings.confirm_seeds} fresh seeds)")
        return True
    if why_not.startswith("confirm per"):
        raise ArgumentError(f"{why_not}; the search is kept: run again with the right --confirm-per")
    if settings.confirm_seeds:
        note(f"note: {why_not}")
    return False


def run_study(
    recipe: Recipe,
    settings: StudySettings,
    devices: Sequence[str] = ("cpu",),
    *,
    title: str | None = None,
    quiet: bool = False,
    console: Any = None,
    log: Callable[[str], None] = print,
    note: Callable[[str], None] = print,
    experiment: Experiment | None = None,
) -> StudyRun:
    """Run a whole study, as ``fusionsearch run`` does: the search, then its confirmation.

    Creates or resumes the study (``prepare_study``) and runs its queued trials, then queues the
    confirmation of the winners and the baselines over fresh seeds and runs it.

    Args:
        recipe: the study's set-up (``load_recipe``).
        settings: the study's name, storage, trial count, confirmation and the rest.
        devices: where trials train: one device runs them in this process, several run one
            worker process per device, with a live view on ``console``.
        title: replaces the first line printed (``compare`` names its rows).
        quiet: log lines only, no live view.
        log: where the progress lines go.
        note: where remarks for a person go (a resumed study, failed workers).
        experiment: the recipe made concrete with the study seed, where the caller has one
            (else made here).
    """
    exp = experiment or Experiment(recipe, settings.seed)
    study = prepare_study(recipe, settings, exp)
    log(title or f"study {settings.study} in {redact(settings.storage)}: {settings.trials} trials + baselines")
    for line in study_header(exp):
        log(line)
    _say_resuming(study, settings, log, note)
    steps = recipe.training.steps
    bad: list[int] = []
    logs: Path | None = None
    for phase in ("search", "confirmation"):
        if phase == "confirmation" and not _confirm(study, settings, log, note):
            break
        failed, logs = run_workers(
            study,
            settings,
            list(devices),
            quiet=quiet,
            artifacts=settings.artifacts,
            steps_total=steps,
            console=console,
        )
        if failed:
            note(f"workers {failed} exited with an error: see {logs}")
        bad += failed
    return StudyRun(study, settings, summarize(study), sorted(set(bad)), logs)
