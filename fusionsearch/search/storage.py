"""Where studies live: Optuna storages and artifact stores, chosen from one URL.

The default is an SQLite file used through Optuna's RDBStorage: embedded (no server) and the only
embedded storage with heartbeats, Optuna's built-in way to notice a dead worker and retry its
trial (JournalFileBackend is safe for processes on one machine but has no heartbeats). SQLite's
"database is locked" under parallel writers (Optuna FAQ) is avoided with write-ahead logging and a
long connect timeout: trials write a few rows a minute, readers never block the writer. Any Optuna
URL works (PostgreSQL for many machines); ``journal:PATH`` picks the journal file storage.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import RDBStorage

from fusionsearch.errors import ArgumentError, FusionSearchError, StorageError
from fusionsearch.paths import write_atomic
from fusionsearch.search.credentials import mask, redact, remember
from fusionsearch.search.optuna_internals import artifact_path, journal_file, wrapped_storage

__all__ = [
    "queue_lock",
    "storage_url",
    "DEFAULT_STORAGE",
    "redact",
    "mask",
    "open_storage",
    "artifact_store",
    "artifact_dir",
    "HEARTBEAT_INTERVAL",
    "heartbeat_settings",
    "study_lock",
]

DEFAULT_STORAGE = "sqlite:///fusionsearch.db"
HEARTBEAT_INTERVAL = 10  # seconds; FUSIONSEARCH_HEARTBEAT overrides (tests use 1)


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace period) in seconds: a trial silent for the grace period is a dead worker's."""
    interval = _seconds("FUSIONSEARCH_HEARTBEAT", HEARTBEAT_INTERVAL)
    return interval, _seconds("FUSIONSEARCH_GRACE", 3 * interval)


def _seconds(variable: str, default: int) -> int:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ArgumentError(f"{variable} must be a whole number of seconds >= 1, got {text!r}")
    return value


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///") :]
    if "?" in rest:
        raise StorageError(
            f"storage {url}: an SQLite URL takes no query (?...): fusionsearch sets what it needs itself"
            " (write-ahead log, timeouts); give sqlite:///FILE.db"
        )
    return None if rest in ("", ":memory:") else Path(rest)


def _check_sqlite_file(path: Path, url: str) -> None:
    """A path that exists must be an SQLite database: a typo pointing at a YAML file or a folder
    is one line, not SQLAlchemy's traceback (and the file is never touched)."""
    if path.is_dir():
        raise StorageError(f"storage {url}: {str(path)!r} is a folder; give an SQLite file such as {path / 'study.db'}")
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise StorageError(f"storage {url}: {str(path)!r} exists and is not an SQLite database")


def _check_writable(path: Path, shown: str) -> None:
    """A study is written to: a read-only database (or a folder where SQLite cannot put its
    write-ahead log) is refused here, naming the file, not at the first trial's commit."""
    if path.exists() and not os.access(path, os.W_OK):
        raise StorageError(
            f"storage {shown}: {str(path)!r} is read-only; `trials`, `best` and `report` can read it, a run cannot"
        )
    folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
    if folder is not None and not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(f"storage {shown}: the folder {str(folder)!r} is not writable (SQLite keeps its log there)")


def check_url(url: str, create: bool = True) -> None:
    """What can be said of a storage URL before opening it (and before taking its lock, which
    would leave a ``.lock`` file beside a mistyped path): a file storage's path is not a folder,
    an existing SQLite path is a database, and a reader's file exists."""
    shown = redact(url)
    remember(url)
    if not url.strip():
        raise StorageError(
            f"--storage is empty: give a URL such as {DEFAULT_STORAGE}, or leave it out for that default"
        )
    if url.startswith("journal:"):
        journal = Path(url[len("journal:") :])
        if journal.is_dir():
            raise StorageError(f"storage {shown}: {str(journal)!r} is a folder; give a journal file")
        if not create and not journal.is_file():
            raise StorageError(f"storage {shown}: no journal file {str(journal)!r} (a mistyped path?)")
        return
    path = _sqlite_path(url)
    if path is not None:
        _check_sqlite_file(path, shown)
        if create:
            _check_writable(path, shown)
        if not create and not path.is_file():
            raise StorageError(f"storage {shown}: no database file {str(path)!r} (a mistyped path?)")
    elif url.startswith("sqlite"):
        raise StorageError(f"in-memory SQLite cannot be shared by workers: give a file, e.g. {DEFAULT_STORAGE}")
    elif "://" not in url:
        raise StorageError(
            f"storage {shown!r} is not a URL: give sqlite:///FILE.db, journal:FILE or postgresql://USER@HOST/DB"
        )
    else:
        _check_driver(url, shown)


def _check_driver(url: str, shown: str) -> None:
    """A server URL names a database SQLAlchemy knows, and its driver is installed: checked with
    the URL, so every command that takes ``--storage`` stops with the same line (``run`` and
    ``compare`` met a missing driver only inside SQLAlchemy, as a ModuleNotFoundError)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError as UrlError
    from sqlalchemy.exc import NoSuchModuleError

    try:
        parsed = make_url(url)
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise StorageError(f"storage {shown}: SQLAlchemy knows no database {parsed.drivername!r}") from None
    except UrlError as e:
        raise StorageError(f"storage {shown}: not a database URL ({mask(_first_line(e), url)})") from None
    except ImportError as e:
        raise StorageError(
            f"storage {shown}: its database driver is not installed ({mask(_first_line(e), url)}); install it"
            " (PostgreSQL: pip install 'fusionsearch[postgres]') or name an installed one in the URL"
        ) from None


def open_storage(
    url: str = DEFAULT_STORAGE,
    heartbeat: bool = True,
    create: bool = True,
    on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], Any] | None = None,
) -> optuna.storages.BaseStorage:
    """Open the Optuna storage at ``url``: ``sqlite:///FILE``, ``postgresql://...`` or ``journal:FILE``.

    Creating the schema is serialised by ``study_lock``, so two ``run`` commands may start on one
    new database.

    Args:
        url: the storage's address.
        heartbeat: RDB storages get heartbeats, so that a dead worker's trial is noticed.
        create: False for commands that only read (``trials``, ``best``, ``report``): a file that
            is not there is an error naming it, never a new empty database.
        on_stale: called with each trial whose worker stopped beating (a study's: ``requeue.retry``,
            which queues a copy of it).
    """
    shown = redact(url)
    check_url(url, create)
    beats = heartbeat_settings() if heartbeat else None  # a bad setting stops before any file exists
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        journal = Path(url[len("journal:") :])
        journal.parent.mkdir(parents=True, exist_ok=True)
        try:
            return JournalStorage(JournalFileBackend(str(journal)))
        except Exception as e:
            raise StorageError(f"storage {shown}: cannot read the journal: {type(e).__name__}: {e}") from None
    engine_kwargs: dict[str, Any] = {}
    path = _sqlite_path(url)
    if path is not None:  # check_url has refused folders, other files and a reader's missing file
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with sqlite3.connect(path, timeout=120) as con:  # WAL is a property of the file: set once
                con.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as e:
            raise StorageError(f"storage {shown}: {str(path)!r} cannot be used as an SQLite database: {e}") from None
        engine_kwargs = {"connect_args": {"timeout": 120}}
    kwargs: dict[str, Any] = {}
    if beats is not None:
        interval, grace = beats
        kwargs = {
            "heartbeat_interval": interval,
            "grace_period": grace,
            "heartbeat_stale_trial_callback": on_stale,  # a dead worker's trial: a copy, same plan
        }
    try:  # creating the schema is serialised; a reader creates nothing, so it takes no lock (and writes no file)
        with study_lock(url) if create else contextlib.nullcontext(), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except ImportError as e:
        raise StorageError(f"storage {shown}: a database driver is missing ({mask(_first_line(e), url)})") from None
    except FusionSearchError:
        raise
    except Exception as e:
        raise StorageError(f"cannot open storage {shown}: {type(e).__name__}: {mask(_first_line(e), url)}") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


# ---- one process at a time ---------------------------------------------------------------------
_held: dict[str, list[Any]] = {}  # lock key -> [depth, release]: re-entrant within a process
_held_guard = threading.Lock()
_PG_LOCK_KEY = 0x66757369  # "fusi": the advisory lock id fusionsearch takes on PostgreSQL


def _lock_key(url: str) -> str | None:
    path = _sqlite_path(url) or (Path(url[len("journal:") :]) if url.startswith("journal:") else None)
    if path is not None:
        return str(path.resolve())
    if url.startswith(("postgresql", "mysql", "mariadb")):
        return redact(url)
    return None


def _file_lock(path: Path) -> Any:
    """``flock`` on ``path``, which exists only while a process holds or waits for the lock: the
    holder removes it before it lets go, so no empty file is left beside the user's database.

    Removing a lock file races with a process that opened it and waits: that one then holds a
    lock on a file no longer at ``path``, while a newcomer creates and locks a new one. So a
    process that got the lock checks that ``path`` is still the file it locked, and otherwise
    opens it again. Only the holder removes the file, so two processes never both pass the check."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the database's own locking only
        return lambda: None
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False  # the holder removed it while this process waited
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        os.close(fd)

    def release() -> None:
        try:
            path.unlink(missing_ok=True)  # while still held: see above
        finally:
            os.close(fd)  # closing lets go of the lock

    return release


def _server_lock(url: str) -> Any:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    deadline = time.monotonic() + 60
    while True:  # the server may still be starting (a test's throw-away one, a pod's sidecar)
        try:
            conn = engine.connect()
            break
        except Exception as e:
            if time.monotonic() > deadline:
                raise StorageError(
                    f"cannot open storage {redact(url)}: {type(e).__name__}: {mask(_first_line(e), url)}"
                ) from None
            time.sleep(1)
    if url.startswith("postgresql"):
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        unlock = text("SELECT pg_advisory_unlock(:k)")
    else:
        conn.execute(text("SELECT GET_LOCK('fusionsearch', 600)"))
        unlock = text("SELECT RELEASE_LOCK('fusionsearch')")

    def release() -> None:
        try:
            conn.execute(unlock, {"k": _PG_LOCK_KEY})
        finally:
            conn.close()
            engine.dispose()

    return release


@contextlib.contextmanager
def study_lock(url: str) -> Iterator[None]:
    """Hold the storage's advisory lock: what one process reads and then writes (creating the
    schema, queueing slots, popping or re-queueing a trial) is not interleaved with another's.

    SQLite and journal files get a ``flock`` on ``FILE.fusionsearch-lock`` (not ``FILE.lock``, which
    Optuna's journal storage locks itself); PostgreSQL ``pg_advisory_lock``
    and MySQL ``GET_LOCK`` on a connection of their own. Re-entrant within a process. The lock
    file is there only while the lock is held or awaited (``_file_lock``)."""
    key = _lock_key(url)
    if key is None:
        yield
        return
    with _held_guard:
        mine = _held.get(key)
        if mine is not None:
            mine[0] += 1
    if mine is not None:
        try:
            yield
        finally:
            mine[0] -= 1
        return
    # never FILE.lock: Optuna's JournalFileBackend locks that very file, and two locks on one file
    # made every journal run wait for Optuna's 10 s timeouts, then force it open (issue 23)
    lock_file = Path(key + ".fusionsearch-lock")
    release = _file_lock(lock_file) if not url.startswith(("postgresql", "mysql", "mariadb")) else None
    if release is None:
        release = _server_lock(url)
    with _held_guard:
        _held[key] = [1, release]
    try:
        yield
    finally:
        with _held_guard:
            del _held[key]
        release()


def artifact_dir(url: str, override: str | os.PathLike[str] | None = None) -> Path:
    """Artifacts live beside an SQLite or journal file (``NAME-artifacts/``), else in ./fusionsearch-artifacts."""
    if override is not None:
        return Path(override)
    path = _sqlite_path(url) or (Path(url[len("journal:") :]) if url.startswith("journal:") else None)
    if path is not None:
        return path.with_name(path.stem + "-artifacts")
    return Path("fusionsearch-artifacts")


class _WholeFileStore(FileSystemArtifactStore):
    """Optuna's file store, writing each artefact whole or not at all (``paths.write_atomic``):
    Optuna's own ``write`` leaves a truncated file under the artefact's id when the disk is full."""

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        write_atomic(artifact_path(self, artifact_id), lambda f: shutil.copyfileobj(content_body, f))


def artifact_store(
    url: str, override: str | os.PathLike[str] | None = None, create: bool = True
) -> FileSystemArtifactStore:
    """The study's artefact folder as an Optuna store; ``create=False`` (readers) never makes it."""
    d = artifact_dir(url, override)
    if not create and not d.is_dir():
        raise StorageError(f"no artefact folder {str(d)!r} (give --artifacts if the study keeps them elsewhere)")
    d.mkdir(parents=True, exist_ok=True)
    return _WholeFileStore(str(d))


def storage_url(storage: Any) -> str | None:
    """The URL (or ``journal:PATH``) of an opened storage, behind Optuna's cache, for ``study_lock``."""
    inner = wrapped_storage(storage)
    backend = storage if inner is None else inner
    engine = getattr(backend, "engine", None)
    if engine is not None:
        return engine.url.render_as_string(hide_password=False)
    path = journal_file(backend)  # JournalStorage's backend is the file backend itself
    return f"journal:{path}" if path else None


@contextlib.contextmanager
def queue_lock(storage: Any) -> Iterator[None]:
    """One read-and-claim at a time among the processes sharing a storage. SQLite has no row
    locks (``SELECT ... FOR UPDATE`` is ignored), so two workers could both see a trial WAITING
    and both take it, or one fail with "database is locked" on a stale snapshot (seen under load
    with two workers); re-queueing a failed trial is check-then-act on every storage."""
    url = storage_url(storage)
    if url is None:
        yield
        return
    with study_lock(url):
        yield
