"""Opening a run's own files safely: never through a link, never blocking on a pipe.

A run directory may hold entries planted by someone else (a link to a user's file, a FIFO).
Every file loradeck opens in a run directory goes through ``open_fd``: ``O_NOFOLLOW`` refuses a
link, ``O_NONBLOCK`` keeps a FIFO from hanging the caller, and the opened file must be a regular
file. Folders loradeck writes into are checked by ``real_dir``; files that leave the run
(uploads) by ``inside``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from loradeck.engine.errors import LoradeckError

NOFOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafeRunFile(LoradeckError):
    """A run file that is a link, a pipe or anything but a regular file."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(f"{what}; loradeck opens only regular files in a run directory",
                         kind="usage", where=str(path),
                         hint="remove it (or move the run directory aside) and try again")


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "is a link"
    if stat.S_ISFIFO(mode):
        return "is a pipe (FIFO), not a file"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    return "is not a regular file"


def open_fd(path: Path, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """``os.open`` of a regular file that is not a link; its descriptor (blocking again).

    Raises UnsafeRunFile for a link, a pipe, a device or a folder; FileNotFoundError and other
    OSErrors pass through."""
    path = Path(path)
    try:
        fd = os.open(path, flags | NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            try:
                why = _kind(os.lstat(path).st_mode)
            except OSError:
                why = "cannot be opened safely"
            raise UnsafeRunFile(path, why) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafeRunFile(path, _kind(info.st_mode))
    os.set_blocking(fd, True)
    return fd


def read_bytes(path: Path) -> bytes:
    """The whole of a regular file (see ``open_fd``)."""
    fd = open_fd(path)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def read_text(path: Path) -> str:
    return read_bytes(path).decode("utf-8", errors="replace")


def write_text(path: Path, text: str) -> None:
    """Create or truncate a regular file (never through a link) and write ``text``."""
    fd = open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def append_handle(path: Path):
    """A binary append handle on a regular file (created when missing)."""
    return os.fdopen(open_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab")


def real_dir(path: Path) -> Path:
    """``path`` as a folder loradeck may write into: made when missing, refused when it is a
    link or not a folder."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        path.mkdir(parents=True)
        return path
    if not stat.S_ISDIR(mode):
        raise UnsafeRunFile(path, "is a link" if stat.S_ISLNK(mode) else "is not a folder")
    return path


def inside(path: Path, root: Path) -> Path:
    """The regular file ``path`` resolves to, which must sit inside ``root``; a link that
    leaves ``root`` (or points at anything but a regular file) is refused in one line."""
    path = Path(path)
    real = path.resolve()
    if not real.is_relative_to(Path(root).resolve()):
        raise LoradeckError(f"is a link to {real}, outside the run directory", kind="usage",
                            where=str(path), hint="remove the link; loradeck uploads only the "
                            "run's own files")
    mode = os.stat(real).st_mode
    if not stat.S_ISREG(mode):
        raise UnsafeRunFile(path, _kind(mode))
    return real
