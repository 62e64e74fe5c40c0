"""The append-only events file of a run: writing, reading, following, and the documented schema."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loradeck.engine.runs import run_files
from loradeck.engine.runs.phase import TERMINAL, Phase

PHASES = tuple(Phase)
TERMINAL_PHASES = TERMINAL

# type -> fields every such event carries (besides t and type); others are optional.
SCHEMA: dict[str, tuple[str, ...]] = {
    "status": ("phase", "message"),
    "info": (),
    "metrics": ("step",),
    "log": ("level", "text"),
    "checkpoint": ("step", "path"),
    "error": ("kind", "message", "hint"),
    "done": ("adapter",),
    "samples": ("step", "samples"),  # samples: [{prompt, answer, reference}]; seconds
    "system": (),  # gpus: [{index, util, mem_used_gb, mem_total_gb, temp_c, power_w}], or
                   # cpu_percent, ram_used_gb, ram_total_gb, process_ram_gb
}


class EventSink:
    """Where a job's events go: ``emit`` one event; status, log and error are built on it."""

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        """Record one event; return it. This sink writes nothing (non-main processes)."""
        return {"type": type, **fields}

    def status(self, phase: str, message: str = "") -> dict[str, Any]:
        return self.emit("status", phase=phase, message=message)

    def log(self, text: str, level: str = "info") -> dict[str, Any]:
        return self.emit("log", level=level, text=text)

    def error(self, kind: str, message: str, hint: str = "", **extra: Any) -> dict[str, Any]:
        return self.emit("error", kind=kind, message=message, hint=hint, **extra)


class EventWriter(EventSink):
    """Appends events as JSON lines; each line is written with one write() and flushed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        event = {"t": round(time.time(), 3), "type": type, **fields}
        line = json.dumps(event, ensure_ascii=False, default=str) + "\n"
        fd = run_files.open_fd(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # writers in turn: the check below sees whole lines
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line  # a torn last line (a writer killed mid-line) stays apart
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
        return event



def parse_lines(data: str) -> list[dict[str, Any]]:
    """Events from complete lines of text; a torn or corrupt line is skipped."""
    out = []
    for line in data.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(ev, dict):
            out.append(ev)
    return out


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Every complete event in the file (none if it does not exist). Raises
    run_files.UnsafeRunFile for a link or a pipe."""
    try:
        return parse_lines(run_files.read_text(Path(path)))
    except FileNotFoundError:
        return []


class EventTail:
    """Reads events incrementally from a growing file; only whole lines are returned."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        try:
            with os.fdopen(run_files.open_fd(self.path), "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except (FileNotFoundError, run_files.UnsafeRunFile):
            return []
        if not chunk:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        complete, _, self._partial = data.rpartition(b"\n")
        if not complete and not _:
            self._partial = data
            return []
        return parse_lines(complete.decode("utf-8", errors="replace"))


def follow(path: str | Path, stop: callable | None = None, interval: float = 0.25
           ) -> Iterator[dict[str, Any]]:
    """Yield events as they are appended until ``stop()`` is true after a quiet poll."""
    tail = EventTail(path)
    while True:
        events = tail.poll()
        yield from events
        if not events:
            if stop is not None and stop():
                yield from tail.poll()
                return
            time.sleep(interval)
