"""Where studies live: Optuna storages and artifact stores, chosen from one URL.

The default is an SQLite file used through Optuna's RDBStorage: embedded (no server) and the only
embedded storage with heartbeats, Optuna's built-in way to notice a dead worker and retry its
trial (JournalFileBackend is safe for processes on one machine but has no heartbeats). SQLite's
"database is locked" under parallel writers (Optuna FAQ) is avoided with write-ahead logging and a
long connect timeout: trials write a few rows a minute, readers never block the writer. Any Optuna
URL works (PostgreSQL for many machines); ``journal:PATH`` picks the journal file storage.
"""

from __future__ import annotations

import os
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from .errors import FusionSearchError

__all__ = [
    "DEFAULT_STORAGE",
    "redact",
    "open_storage",
    "artifact_store",
    "artifact_dir",
    "HEARTBEAT_INTERVAL",
    "heartbeat_settings",
]

DEFAULT_STORAGE = "sqlite:///fusionsearch.db"
HEARTBEAT_INTERVAL = 10  # seconds; FUSIONSEARCH_HEARTBEAT overrides (tests use 1)
MAX_RETRY = 2


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace period) in seconds: a trial silent for the grace period is a dead worker's."""
    interval = int(os.environ.get("FUSIONSEARCH_HEARTBEAT", HEARTBEAT_INTERVAL))
    return interval, int(os.environ.get("FUSIONSEARCH_GRACE", 3 * interval))


def redact(url: str) -> str:
    """The URL with any password replaced by ***: URLs are printed, credentials never."""
    if url.startswith("journal:"):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///") :]
    return None if rest in ("", ":memory:") else Path(rest)


def open_storage(url: str = DEFAULT_STORAGE, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; RDB storages get heartbeats and a retry-on-stale callback."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal:") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = {}
    path = _sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path, timeout=120) as con:  # WAL is a property of the file: set once
            con.execute("PRAGMA journal_mode=WAL")
        engine_kwargs = {"connect_args": {"timeout": 120}}
    elif url.startswith("sqlite"):
        raise FusionSearchError(f"in-memory SQLite cannot be shared by workers: give a file, e.g. {DEFAULT_STORAGE}")
    kwargs: dict[str, Any] = {}
    if heartbeat:
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        interval, grace = heartbeat_settings()
        kwargs = {
            "heartbeat_interval": interval,
            "grace_period": grace,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        }
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except ImportError as e:
        raise FusionSearchError(f"storage {redact(url)}: a database driver is missing ({e})") from None
    except Exception as e:
        raise FusionSearchError(f"cannot open storage {redact(url)}: {type(e).__name__}: {e}") from None


def artifact_dir(url: str, override: str | os.PathLike[str] | None = None) -> Path:
    """Artifacts live beside an SQLite or journal file (``NAME-artifacts/``), else in ./fusionsearch-artifacts."""
    if override is not None:
        return Path(override)
    path = _sqlite_path(url) or (Path(url[len("journal:") :]) if url.startswith("journal:") else None)
    if path is not None:
        return path.with_name(path.stem + "-artifacts")
    return Path("fusionsearch-artifacts")


def artifact_store(url: str, override: str | os.PathLike[str] | None = None) -> FileSystemArtifactStore:
    d = artifact_dir(url, override)
    d.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(d))
