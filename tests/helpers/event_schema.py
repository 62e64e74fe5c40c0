"""Checking events as the writer checks them (``loradeck.engine.runs.events``)."""

from __future__ import annotations

from typing import Any

from loradeck.engine.runs.events import event_problems


def check_event(event: dict[str, Any]) -> list[str]:
    """Problems with one event against its type (empty when it conforms)."""
    return event_problems(event)
