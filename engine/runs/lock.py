"""The run's job lock: ``RUN/job.lock``, held exclusively (flock) by the one live job.

The launcher takes the lock before it starts the job process and hands the open file to it
(``LOCK_FD_ENV`` names the descriptor), so two starts at the same instant cannot both win, and
every process that inherits the descriptor (``accelerate launch`` and its workers) keeps it held.
The lock is released by the kernel when the last holder exits, even on ``kill -9``. Liveness is
this lock, not state.json: a probe asks for a shared lock without waiting.

Merge and push take the same lock in their own process, so a run has one job at a time.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs import run_files

LOCK_NAME = "job.lock"
LOCK_FD_ENV = "LORADECK_JOB_LOCK_FD"
ACQUIRE_WAIT_S = 1.0  # a probe holds a shared lock for microseconds; a job holds it for good

_held: dict[Path, int] = {}  # lock path -> descriptor held by this process


class AlreadyRunning(LoradeckError):
    """A second start of a run whose job is alive."""

    def __init__(self, run_id: str, pid: int | None) -> None:
        super().__init__(f"{run_id} is already running" + (f" (pid {pid})" if pid else ""),
                         kind="usage", hint=f"follow it with: loradeck logs {run_id} --follow")
        self.pid = pid


def lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / LOCK_NAME


def holder_pid(run_dir: Path) -> int | None:
    """The pid the holder wrote into the lock file (None when unknown)."""
    try:
        text = run_files.read_text(lock_path(run_dir)).strip()
    except (OSError, LoradeckError):
        return None
    return int(text) if text.isdigit() else None


def held_here(run_dir: Path) -> bool:
    """This process holds the run's lock."""
    return lock_path(run_dir) in _held


def is_held(run_dir: Path) -> bool:
    """True while some process holds the run's job lock (this one included)."""
    path = lock_path(run_dir)
    if path in _held:
        return True
    try:
        fd = run_files.open_fd(path)
    except (OSError, LoradeckError):  # missing, or not a lock file at all (a link, a pipe)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the probe's shared lock
    return False


def _pid_running(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_pid(fd: int, pid: int) -> None:
    """Record ``pid`` as the holder (informative: the lock itself is the fact)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid}\n".encode("ascii"), 0)


def acquire(run_dir: Path, run_id: str | None = None, *, record: bool = True) -> int:
    """Take the run's lock for this process; its descriptor. Reentrant within a process.

    ``record``: write this process's pid as the holder (a launcher does not: it writes the
    pid of the job it hands the lock to, and a refused start waits to name that one).
    Raises AlreadyRunning when another process holds it."""
    path = lock_path(run_dir)
    if path in _held:
        return _held[path]
    run_id = run_id or Path(run_dir).name
    try:
        fd = run_files.open_fd(path, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        raise storage_error(exc, path) from None
    deadline = time.monotonic() + ACQUIRE_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            other = holder_pid(run_dir)
            if _pid_running(other) or time.monotonic() > deadline:
                os.close(fd)
                raise AlreadyRunning(run_id, other) from None
            time.sleep(0.02)  # a liveness probe, or a holder about to write its pid
    if record:
        write_pid(fd, os.getpid())
    else:
        os.ftruncate(fd, 0)
    _held[path] = fd
    return fd


@contextmanager
def holding(run_dir: Path, run_id: str | None = None) -> Iterator[None]:
    """Hold the run's lock for a block (merge, push); a lock this process already holds is
    kept after the block, as it was."""
    taken = lock_path(run_dir) not in _held
    acquire(run_dir, run_id)
    try:
        yield
    finally:
        if taken:
            release(run_dir)


def release(run_dir: Path) -> None:
    """Let go of a lock this process holds (its children that inherited it keep it)."""
    fd = _held.pop(lock_path(run_dir), None)
    if fd is not None:
        os.close(fd)


def adopt(run_dir: Path) -> bool:
    """In a job started by the launcher: take over the lock it handed down. False when this
    process was given none (or a descriptor that is not this run's lock file)."""
    raw = os.environ.get(LOCK_FD_ENV, "")
    if not raw.isdigit():
        return False
    fd = int(raw)
    path = lock_path(run_dir)
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False
    if not same:
        return False
    _held[path] = fd
    write_pid(fd, os.getpid())
    return True


def disk_full(exc: BaseException) -> bool:
    """``exc`` (or what caused it) says the disk is full: ENOSPC or EDQUOT, or a library's
    error that carries only the text (safetensors: "No space left on device (os error 28)")."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "os error 28" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def storage_error(exc: BaseException, path: Path) -> LoradeckError:
    """A storage problem (read-only, no permission, disk full) as one line with a hint."""
    if disk_full(exc):
        return LoradeckError("the disk is full (No space left on device)", kind="disk", where=str(path),
                             hint="free some space, or set LORADECK_HOME to a larger disk")
    why = getattr(exc, "strerror", None) or type(exc).__name__
    return LoradeckError(f"cannot write here ({why})", kind="disk", where=str(path),
                         hint="set LORADECK_HOME to a directory you can write to")
