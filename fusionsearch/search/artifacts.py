"""A trial's files in the study's artefact store: its net, saved with the SHA-256 a reader checks
it against, and its fusion weights (a few kB, kept for every trial: the report draws them).

A net that a worker on another machine reads back (the warm start's) may come back missing,
truncated or damaged in place; a damaged file loads without an error and would train, so
``read_net`` compares its digest with the one recorded when it was saved.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from fusionsearch.errors import DataError
from fusionsearch.nets.fusion import fusion_weights
from fusionsearch.search.records import TrialRecord

__all__ = ["sha256", "save_nets", "read_net"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_nets(store: Any, trial: optuna.Trial, net: Any, weighting: Any, keep: bool) -> None:
    """Upload ``trial``'s net when ``keep`` (with its ``weighting`` state), and its fusion weights
    when it has fusion units; their artefact ids go to the trial's record."""
    from optuna.artifacts import upload_artifact

    from fusionsearch.nets.io import save

    record = TrialRecord(trial)
    with tempfile.TemporaryDirectory() as d:
        if keep:
            model = Path(d) / f"trial-{trial.number}.pt"
            save(net.cpu(), model, weighting=weighting)
            record.model_sha256 = sha256(model)  # what a reader checks the file against
            record.model_artifact = upload_artifact(
                artifact_store=store,
                file_path=str(model),
                study_or_trial=trial,
                mimetype="application/octet-stream",
            )
        if net.fusion_units():  # a few kB: kept for every trial (the report draws them)
            fw = Path(d) / f"trial-{trial.number}-fusion.json"
            fw.write_text(json.dumps(fusion_weights(net)))
            record.fusion_artifact = upload_artifact(artifact_store=store, file_path=str(fw), study_or_trial=trial)


def read_net(store: Any, done: FrozenTrial) -> Any:
    """The net trial ``done`` saved, checked against the SHA-256 recorded when it was saved (a file
    damaged in place loads without an error, and would train)."""
    from optuna.artifacts import download_artifact

    from fusionsearch.nets.io import load

    record = TrialRecord(done)
    if record.model_artifact is None:
        raise DataError("missing: the trial recorded no saved net")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "warmstart.pt"
        download_artifact(artifact_store=store, file_path=str(path), artifact_id=record.model_artifact)
        want = record.model_sha256  # None in a study saved before it was recorded
        if want is not None and sha256(path) != want:
            raise DataError("damaged: its SHA-256 differs from the one recorded when it was saved")
        return load(path, trust=True)  # written by a worker of this study
