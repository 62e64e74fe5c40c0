"""The append-only events file of a run: its event types, writing, reading and following.

Each event type is a class that names its fields; every writer checks an event against its
class before it is written, so an unknown type, an unknown field, a missing field or a bad
phase is an error at write time (EventError), in production as in the tests.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from loradeck.engine.enums import EvalStage
from loradeck.engine.errors import ERROR_KINDS
from loradeck.engine.runs import run_files
from loradeck.engine.runs.phase import Phase


class EventError(ValueError):
    """An event that its type does not allow."""


class EventType:
    """One type of event: the fields every such event carries and the ones it may carry
    (``t`` and ``type`` are added by the writer)."""

    name: ClassVar[str]
    required: ClassVar[tuple[str, ...]] = ()
    optional: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def problems(cls, fields: dict[str, Any]) -> list[str]:
        """What is wrong with an event of this type (empty when nothing)."""
        allowed = {*cls.required, *cls.optional, "t", "type"}
        out = [f"{cls.name} lacks {f}" for f in cls.required if f not in fields]
        out += [f"{cls.name} has no field {f!r}" for f in sorted(set(fields) - allowed)]
        return out + cls.value_problems(fields)

    @classmethod
    def value_problems(cls, fields: dict[str, Any]) -> list[str]:
        return []


class Status(EventType):
    """The run's phase changed (training, merge, push), with a message for a person."""

    name = "status"
    required = ("phase", "message")

    @classmethod
    def value_problems(cls, fields: dict[str, Any]) -> list[str]:
        phase = fields.get("phase")
        return [] if phase in tuple(Phase) else [f"unknown phase {phase!r}"]


class Info(EventType):
    """What the job set up (model, parameters, data sizes, device), or a merge's result."""

    name = "info"
    optional = ("model", "device", "dtype", "quantization", "quantization_auto", "lora_variant", "lora_r",
                "lora_alpha", "trainable_parameters", "total_parameters", "trainable_percent",
                "footprint_gb", "train_rows", "eval_rows", "kept_rows", "truncated_rows",
                "dropped_rows", "first_dropped",
                "batch_size", "grad_accum", "effective_batch", "num_processes",
                "gradient_checkpointing", "padding_free", "resumed_from", "dataset", "qalora",
                "merge", "method", "adapter_from")


class Metrics(EventType):
    """The figures at one optimizer step."""

    name = "metrics"
    required = ("step",)
    optional = ("max_steps", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm",
                "tokens_per_second", "memory_gb", "eta_seconds", "figures")

    @classmethod
    def value_problems(cls, fields: dict[str, Any]) -> list[str]:
        step = fields.get("step")
        return [] if isinstance(step, int) and not isinstance(step, bool) else \
            [f"metrics step must be a whole number (got {step!r})"]


class Log(EventType):
    """A line for the log, with the figures it speaks of."""

    name = "log"
    required = ("level", "text")
    optional = ("resumed_from", "step", "tensors", "adapter_checksum", "batch_size",
                "grad_accum", "sample_seconds", "prepared_rows", "total_rows", "stage",
                "adapter_from", "source_run", "source_checkpoint")


class Checkpoint(EventType):
    """A complete checkpoint was written."""

    name = "checkpoint"
    required = ("step", "path")


class Error(EventType):
    """What went wrong, for a person (kind: config, data, oom, disk, network, auth, internal)."""

    name = "error"
    required = ("kind", "message", "hint")
    optional = ("retrying", "step", "micro_batch", "grad_accum", "max_length", "memory_gb",
                "device", "detail", "gpu_total_gb")

    @classmethod
    def value_problems(cls, fields: dict[str, Any]) -> list[str]:
        kind = fields.get("kind")
        return [] if kind in ERROR_KINDS else [f"unknown error kind {kind!r}"]


class Done(EventType):
    """Training finished: the adapter and the final figures."""

    name = "done"
    required = ("adapter",)
    optional = ("train_loss", "eval_loss", "runtime_s", "step", "max_steps", "sample_seconds")


class Samples(EventType):
    """Greedy answers at an eval step: [{text, prompt, answer, reference}]."""

    name = "samples"
    required = ("step", "samples")
    optional = ("seconds",)


class System(EventType):
    """GPU use, memory, temperature and power, or the CPU's and RAM's, every few seconds."""

    name = "system"
    optional = ("gpus", "cpu_percent", "ram_used_gb", "ram_total_gb", "process_ram_gb")


class Eval(EventType):
    """An evaluation (loradeck.engine.evals): at work, ``done`` of ``total`` at a stage
    (answer, judge, tasks) for a model; at its end (stage ``done``) its file, the scores per
    model, the best checkpoint, the judge's tally and the benchmark tasks."""

    name = "eval"
    required = ("stage",)
    optional = ("model", "done", "total", "path", "rows", "source", "models",
                "best_checkpoint", "judge", "tasks")
    ENDED = ("path", "rows", "models")

    @classmethod
    def value_problems(cls, fields: dict[str, Any]) -> list[str]:
        stage = fields.get("stage")
        if stage not in tuple(EvalStage):
            return [f"unknown eval stage {stage!r}"]
        need = cls.ENDED if stage == EvalStage.DONE else ("model", "done", "total")
        return [f"eval ({stage}) lacks {f}" for f in need if f not in fields]


EVENT_TYPES: dict[str, type[EventType]] = {
    c.name: c for c in (Status, Info, Metrics, Log, Checkpoint, Error, Done, Samples, System,
                        Eval)}


def event_problems(event: dict[str, Any]) -> list[str]:
    """What is wrong with a whole event as read from the file (empty when nothing)."""
    out = [] if isinstance(event.get("t"), (int, float)) else ["missing numeric t"]
    kind = EVENT_TYPES.get(event.get("type"))  # type: ignore[arg-type]
    if kind is None:
        return out + [f"unknown type {event.get('type')!r}"]
    return out + kind.problems(event)


def checked(type: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The event ``type`` with ``fields``, stamped; EventError when its type does not allow
    it."""
    kind = EVENT_TYPES.get(type)
    if kind is None:
        raise EventError(f"unknown event type {type!r}; known: {', '.join(EVENT_TYPES)}")
    problems = kind.problems(fields)
    if problems:
        raise EventError(f"{type} event refused: {'; '.join(problems)}")
    return {"t": round(time.time(), 3), "type": type, **fields}


class Events:
    """Where a job's events go: ``emit`` checks one event (EventError when its type does not
    allow it) and records it; status, log and error are built on it."""

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        event = checked(type, fields)
        self.record(event)
        return event

    def record(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def status(self, phase: str, message: str = "") -> dict[str, Any]:
        return self.emit("status", phase=phase, message=message)

    def log(self, text: str, level: str = "info") -> dict[str, Any]:
        return self.emit("log", level=level, text=text)

    def error(self, kind: str, message: str, hint: str = "", **extra: Any) -> dict[str, Any]:
        return self.emit("error", kind=kind, message=message, hint=hint, **extra)


class NullEvents(Events):
    """Events checked and dropped: the processes of a multi-process job that write no file."""

    def record(self, event: dict[str, Any]) -> None:
        pass


class EventWriter(Events):
    """Appends events as JSON lines; each line is written with one write() and flushed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, event: dict[str, Any]) -> None:
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
