"""The one error type the engine raises for things a person can fix."""

from __future__ import annotations

ERROR_KINDS = ("config", "data", "oom", "disk", "network", "auth", "internal", "model", "usage")


class LoradeckError(Exception):
    """An error for a person: what is wrong, where, and what to do.

    ``kind`` is one of ERROR_KINDS; ``where`` names a file, row or dotted config key;
    ``hint`` says what to do. ``str()`` gives the one line the CLI prints.
    """

    def __init__(self, message: str, *, kind: str = "internal", where: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
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
        return {"kind": self.kind, "message": msg, "hint": self.hint or ""}
