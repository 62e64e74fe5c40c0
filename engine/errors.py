"""The errors the engine raises for things a person can fix: one class hierarchy, one Enum of
kinds. A caller tells errors apart by class (``AmbiguousRun``) or kind, never by message text."""

from __future__ import annotations

import os
import re
from enum import StrEnum


class ErrorKind(StrEnum):
    """What went wrong, as the ``error`` event and the exit status tell it."""

    CONFIG = "config"
    DATA = "data"
    OOM = "oom"
    DISK = "disk"
    NETWORK = "network"
    AUTH = "auth"
    INTERNAL = "internal"
    MODEL = "model"
    USAGE = "usage"

    @property
    def event_kind(self) -> ErrorKind:
        """The kind an ``error`` event records: a bad model or command line is a config error."""
        return ErrorKind.CONFIG if self in (ErrorKind.MODEL, ErrorKind.USAGE) else self

    @property
    def exit_status(self) -> int:
        """2 for what the person typed or pointed at, 1 for what happened while working."""
        fixable = (ErrorKind.CONFIG, ErrorKind.USAGE, ErrorKind.DATA, ErrorKind.MODEL)
        return 2 if self in fixable else 1

    @classmethod
    def of(cls, kind: str) -> ErrorKind:
        """The member for ``kind``; INTERNAL for anything unknown."""
        try:
            return cls(kind)
        except ValueError:
            return cls.INTERNAL


ERROR_KINDS = tuple(ErrorKind)
MAX_PART = 1000  # characters of a message or a place shown to a person (values can be huge)


def cut(text: str, limit: int = MAX_PART) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis where it was cut."""
    return text if len(text) <= limit else f"{text[:limit - 1]}…"


class LoradeckError(Exception):
    """An error for a person: what is wrong, where, and what to do.

    ``kind`` is an ErrorKind (or its value); ``where`` names a file, row or dotted config key;
    ``hint`` says what to do. ``str()`` gives the one line the CLI prints.
    """

    default_kind = ErrorKind.INTERNAL

    def __init__(self, message: str, *, kind: str | None = None, where: str | None = None,
                 hint: str | None = None) -> None:
        message, where = cut(message), cut(where) if where is not None else None
        super().__init__(message)
        self.message = message
        self.kind = ErrorKind.of(kind) if kind is not None else self.default_kind
        self.where = where
        self.hint = hint

    def line(self) -> str:
        """The single line shown to a person."""
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text = f"{text} ({self.hint})"
        return text

    def __str__(self) -> str:
        return self.line()

    def to_event(self) -> dict:
        """Fields of an ``error`` event."""
        msg = f"{self.where}: {self.message}" if self.where else self.message
        return {"kind": str(self.kind.event_kind), "message": msg, "hint": self.hint or ""}


class UsageError(LoradeckError):
    """A command that cannot do what was asked of it now (a run that is not running...)."""

    default_kind = ErrorKind.USAGE


class RunNotFound(UsageError):
    """No run has this id or prefix."""


class AmbiguousRun(UsageError):
    """A prefix that matches several runs."""


_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{8,}")
TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with anything that looks like a Hub token, the token in the environment and
    each of ``secrets`` masked."""
    for secret in (*secrets, *(os.environ.get(name) for name in TOKEN_VARS)):
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _TOKEN_RE.sub("hf_***", text)


def error_text(exc: BaseException | str, *secrets: str | None) -> str:
    """The one line a person reads for ``exc``, wherever it is shown (the CLI, a screen, a
    notification, an event): a LoradeckError's line, else the type and the message; always
    redacted."""
    if isinstance(exc, str):
        text = exc
    elif isinstance(exc, LoradeckError):
        text = exc.line()
    else:
        text = cut(f"{type(exc).__name__}: {exc}")
    return redact(text, *secrets)
