"""Output paths checked before any work: a run that trains for an hour must not fail at its last
line because ``--out`` named a folder, a device or a file system's impossible name. A foundation
module, because the command line and the library (``report.export_best``) check the same way."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fusionsearch.errors import ArgumentError

__all__ = ["check_out"]


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
