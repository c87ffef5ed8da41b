"""The study's answer as a file: the network of the plan that is best after confirmation.

Its own module because it is the one thing in ``report`` that writes outside the storage, and it
must do so atomically: the user's file is replaced only by a complete download that loads as a
network, so Ctrl-C, a full disk or a damaged artefact leave the old file as it was.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from optuna.trial import FrozenTrial

from fusionsearch.errors import FusionSearchError, FusionSearchWarning
from fusionsearch.paths import check_out
from fusionsearch.report.leaderboard import best_trial, plan_summary
from fusionsearch.search.confirm import summarize
from fusionsearch.search.records import TrialRecord
from fusionsearch.search.storage import DEFAULT_STORAGE, artifact_store
from fusionsearch.search.study import load_study

__all__ = ["ExportedBest", "best_to_export", "export_best"]


@dataclass
class ExportedBest:
    """Which trial's network was written, and in words why it is the one (``what``)."""

    trial: FrozenTrial
    what: str
    path: Path

    def describe(self) -> str:
        """One line: why this trial, its plan, and the file written."""
        return f"{self.what}: {plan_summary(TrialRecord(self.trial).plan)} -> {self.path}"


def best_to_export(study_name: str, storage: str = DEFAULT_STORAGE) -> tuple[FrozenTrial, str]:
    """The trial whose network is the study's answer: the plan with the highest mean Delta-m over
    the confirmation's fresh seeds, else (no confirmation) the best single run, said as such."""
    st, _, _ = load_study(study_name, storage)
    conf = summarize(st)
    top = conf.best
    if top is not None and top.net_trial is not None:
        return st.trials[top.net_trial], f"{top.label}, confirmed Delta-m {top.interval} over seeds ({conf.verdict()})"
    chosen = best_trial(st)
    if chosen is None:
        raise FusionSearchError(f"study {study_name!r} has no complete trial yet")
    return chosen, f"trial {chosen.number}, one run, not confirmed over seeds"


def _check_target(target: Path, flag: str) -> None:
    check_out(str(target), flag)
    if target.exists() and not target.stat().st_mode & 0o222:  # the mode, not os.access: root may write anyway
        raise FusionSearchError(f"{flag} {str(target)!r} is write-protected: it is left as it is; choose another file")


def _download_checked(chosen: FrozenTrial, storage: str, artifacts: str | None, tmp: str, out: str) -> None:
    """The trial's network into ``tmp``, then loaded once: a damaged file never replaces ``out``."""
    from optuna.artifacts import download_artifact

    from fusionsearch.nets import load

    try:
        store = artifact_store(storage, artifacts, create=False)
        download_artifact(artifact_store=store, file_path=tmp, artifact_id=str(TrialRecord(chosen).model_artifact))
    except Exception as e:
        raise FusionSearchError(
            f"the network of trial {chosen.number} cannot be read from the artefact store"
            f" ({type(e).__name__}: {e}); {out!r} is left as it was"
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FusionSearchWarning)
            load(tmp, trust=True)  # this study's own worker wrote it: check it is whole
    except FusionSearchError as e:
        raise FusionSearchError(
            f"the network of trial {chosen.number} is damaged ({e}); {out!r} is left as it was"
        ) from None


def export_best(
    study_name: str,
    out: str | os.PathLike[str] = "best.pt",
    storage: str = DEFAULT_STORAGE,
    artifacts: str | None = None,
    flag: str = "out",
) -> ExportedBest:
    """Write the network of the study's best plan to a file, as ``fusionsearch best`` does.

    The best plan is the best after confirmation, else the search's best (``best_to_export``).
    The file is written atomically, keeping an old file's permissions; ``fusionsearch.load`` reads it.

    Args:
        study_name: the study.
        out: the file to write.
        storage: the study's storage URL.
        artifacts: its artefact folder (default: beside the SQLite file).
        flag: what error messages call ``out`` (the command line passes ``--out``).
    """
    chosen, what = best_to_export(study_name, storage)
    if TrialRecord(chosen).model_artifact is None:
        raise FusionSearchError(
            f"trial {chosen.number} kept no network (studies keep the baselines' and the confirmed plans'; "
            "run with --keep-nets all to keep every one, or let the confirmation finish)"
        )
    target = Path(out)
    _check_target(target, flag)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    os.unlink(tmp)  # download_artifact refuses an existing file
    try:
        _download_checked(chosen, storage, artifacts, tmp, str(out))
        if target.exists():  # the replacement keeps the file's permissions, not mkstemp's 0600
            os.chmod(tmp, target.stat().st_mode & 0o7777)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ExportedBest(chosen, what, target)
