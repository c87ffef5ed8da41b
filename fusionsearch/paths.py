"""Paths checked before use. Outputs: a run that trains for an hour must not fail at its last
line because ``--out`` named a folder, a device or a file system's impossible name; a file is
written whole or not at all, and a write the disk refused is told apart from any other error.
Inputs: a file a user names (a recipe, an id file, a metrics file, a data set's list) is read only
if it is a regular file under a size bound, so a FIFO cannot block and ``/dev/zero`` cannot fill
the memory. A foundation module, because the command line and the library check the same way."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO

from fusionsearch.errors import ArgumentError, FusionSearchError

__all__ = ["check_out", "read_input", "read_input_text", "write_atomic", "write_failure", "DISK_ERRNOS"]


def check_out(path: str | None, flag: str, folder: bool = False) -> None:
    """An output path that can be written, checked before any work: a folder where a file goes
    (or a file where a folder goes), a device or pipe (``os.replace`` would put a regular file in
    place of ``/dev/null``), a name the file system cannot hold, or a folder that cannot be
    created or written would otherwise fail only after the training, losing it. ``flag`` names
    the path in the error (``--out`` on the command line)."""
    if path is None:
        return
    p = Path(path)
    if path == "" or any(len(part.encode()) > 255 for part in p.parts):
        raise ArgumentError(f"{flag} {path[:80]!r}: a file name must be 1 to 255 bytes long")
    if p.exists():
        mode = p.stat().st_mode
        if folder and not stat.S_ISDIR(mode):
            raise ArgumentError(f"{flag} {path!r} is a file: give a folder")
        if not folder and stat.S_ISDIR(mode):
            raise ArgumentError(f"{flag} {path!r} is a folder: give a file name such as {p / 'out.pt'}")
        if not folder and not stat.S_ISREG(mode):
            raise ArgumentError(f"{flag} {path!r} exists and is not a regular file (a device or a pipe)")
    parent = next((q for q in [p.parent if not folder else p, *p.parents] if q.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ArgumentError(f"{flag} {path!r}: {str(parent)!r} is not a folder this user can write to")


# ---- inputs ------------------------------------------------------------------------------------------


def read_input(
    path: str | os.PathLike[str], what: str, limit: int, error: type[FusionSearchError] = ArgumentError
) -> bytes:
    """The bytes of the user's file ``path``, if it is a regular file of at most ``limit`` bytes;
    else ``error`` in one line, ``WHAT: PROBLEM``, where ``what`` names the file (``recipe
    'r.yaml'``). The type is checked on the open file (``fstat``), not on the name before opening
    it: opening does not wait for a FIFO's writer (``O_NONBLOCK``), and a file that grows while it
    is read stops at the bound."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what}: no such file") from None
    except OSError as e:
        raise error(f"{what}: cannot be opened ({e.strerror or e})") from None
    info = os.fstat(fd)
    problem = (
        "a folder, not a file"
        if stat.S_ISDIR(info.st_mode)
        else "not a regular file (a FIFO, socket or device)"
        if not stat.S_ISREG(info.st_mode)
        else f"{info.st_size:,} bytes, over the limit of {limit:,}"
        if info.st_size > limit
        else None
    )
    if problem is not None:
        os.close(fd)
        raise error(f"{what}: {problem}")
    with open(fd, "rb", closefd=True) as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise error(f"{what}: cannot be read ({e.strerror or e})") from None
    if len(data) > limit:
        raise error(f"{what}: grew over the limit of {limit:,} bytes while it was read")
    return data


def read_input_text(
    path: str | os.PathLike[str], what: str, limit: int, error: type[FusionSearchError] = ArgumentError
) -> str:
    """``read_input`` decoded as UTF-8; a binary file is ``error`` naming it, not a traceback."""
    data = read_input(path, what, limit, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what}: not UTF-8 text (byte {e.start}), is it the right file?") from None


# ---- outputs -----------------------------------------------------------------------------------------

# a write the machine refused, not the data written: no space, over a quota or a size limit
# (RLIMIT_FSIZE), a read-only or failing disk
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})
# torch.save's C++ writer reports a failed write as a RuntimeError in its own words
# ("[enforce fail at inline_container.cc] . unexpected pos 576 vs 534", "PytorchStreamWriter
# failed writing file"), and SQLite a full disk as "database or disk is full"
_WRITE_FAILURE_TEXT = ("unexpected pos", "PytorchStreamWriter failed writing", "database or disk is full")


def write_failure(e: BaseException) -> OSError | None:
    """The write the disk refused behind ``e`` (itself, or the error it wraps), or None when
    ``e`` is no such failure. torch wraps the ``OSError`` of a file object in a RuntimeError
    (the OSError is its context), and of a path in its own words, which carry no errno: that is
    an ``EIO`` here."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError) and cur.errno in DISK_ERRNOS:
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    text = str(e)
    if any(marker in text for marker in _WRITE_FAILURE_TEXT):
        return OSError(errno.ENOSPC if "is full" in text else errno.EIO, " ".join(text.split())[:200])
    return None


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` whole or not at all: ``write`` fills ``PATH.part``, which then replaces
    ``path``. When the write fails, the part file is removed (a full disk left an 8 MB one
    behind), and a write the disk refused (``write_failure``) comes out as that ``OSError``
    naming ``path``, whatever library wrapped it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        with open(part, "wb") as f:
            write(f)
        os.replace(part, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            part.unlink()
        refused = write_failure(e)
        if refused is None:
            raise
        raise OSError(refused.errno, refused.strerror or str(refused), str(target)) from e
