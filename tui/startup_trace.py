"""Marks of the app's start, for the app benchmark's parts table: with LORADECK_TRACE_START set
to a file, the wall-clock time (``time.time()``) of each named moment, and the time spent in
each named part, are written there as JSON once the first screen is ready. Unset (always, but
in the benchmark), a mark costs one check of a module global.

Light module: the standard library only.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

TRACE_ENV = "LORADECK_TRACE_START"
PATH = os.environ.get(TRACE_ENV) or None
marks: list[tuple[str, float]] = []
parts: dict[str, float] = {}


def mark(name: str) -> None:
    """The moment ``name`` happened."""
    if PATH:
        marks.append((name, time.time()))


@contextmanager
def part(name: str) -> Iterator[None]:
    """Time spent in the block, added up under ``name``."""
    if not PATH:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        parts[name] = parts.get(name, 0.0) + time.perf_counter() - start


def dump() -> None:
    """Write the marks and parts (once; later calls add nothing new)."""
    if not PATH:
        return
    data = {"marks": marks, "parts": parts}
    tmp = f"{PATH}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, PATH)
