"""What killed jobs leave behind: temporary folders named for the process that made them.

A merge writes ``RUN/.merged-tmp-<pid>``, an export ``<out>/.tmp-<pid>``; a process killed
mid-way leaves them (a 7B model's f16 source file is about 14 GB). The next job removes those
whose process is gone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from loradeck.engine.runs.store import pid_alive


def owner_pid(folder: Path, prefix: str) -> int | None:
    """The pid in ``<prefix><pid>`` (None when the rest of the name is not a pid)."""
    rest = folder.name[len(prefix):]
    return int(rest) if rest.isdigit() else None


def stale(parent: Path, prefix: str) -> list[Path]:
    """Folders ``<prefix><pid>`` in ``parent`` whose process is gone (not this one); links are
    never followed nor listed."""
    if not parent.is_dir():
        return []
    out = []
    for d in parent.glob(f"{prefix}*"):
        pid = owner_pid(d, prefix)
        if d.is_symlink() or not d.is_dir() or pid is None:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            out.append(d)
    return sorted(out)


def remove_stale(parent: Path, prefix: str) -> list[Path]:
    """Remove the stale folders (see ``stale``); the ones removed."""
    gone = stale(parent, prefix)
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
    return gone
