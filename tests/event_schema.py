"""Checking events against the documented schema (``loradeck.engine.runs.events.SCHEMA``)."""

from __future__ import annotations

from typing import Any

from loradeck.engine.runs.events import PHASES, SCHEMA


def check_event(event: dict[str, Any]) -> list[str]:
    """Problems with one event against the schema (empty when it conforms)."""
    problems = []
    if not isinstance(event.get("t"), (int, float)):
        problems.append("missing numeric t")
    typ = event.get("type")
    if typ not in SCHEMA:
        problems.append(f"unknown type {typ!r}")
        return problems
    problems += [f"{typ} lacks {f}" for f in SCHEMA[typ] if f not in event]
    if typ == "status" and event.get("phase") not in PHASES:
        problems.append(f"unknown phase {event.get('phase')!r}")
    return problems
