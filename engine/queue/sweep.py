"""Sweeps: ``--sweep KEY=V1,V2`` for several keys gives their cartesian product, one run per
combination, each named for its values.

Light module: the standard library only.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from loradeck.engine.errors import LoradeckError


def parse(items: list[str]) -> list[tuple[str, list[str]]]:
    """``KEY=V1,V2`` items as (key, values); one line naming a bad one."""
    out: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not sep or not key.strip() or not values:
            raise LoradeckError(f"--sweep {item!r} is not KEY=V1,V2,...", kind="usage",
                                where="--sweep", hint="e.g. --sweep training.learning_rate="
                                                      "1e-4,2e-4")
        if key.strip() in (k for k, _ in out):
            raise LoradeckError(f"--sweep names {key.strip()} twice", kind="usage",
                                where="--sweep", hint="give each key once, with all its values")
        out.append((key.strip(), values))
    return out


def combinations(sweep: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """Every combination of the swept values (one empty combination without a sweep)."""
    keys = [k for k, _ in sweep]
    return [dict(zip(keys, values, strict=True))
            for values in itertools.product(*(v for _, v in sweep))]


def run_name(base: str, values: dict[str, Any]) -> str:
    """A run name that says its values: ``base-learning_rate-1e-4-r-16``."""
    parts = [base] + [f"{key.rsplit('.', 1)[-1]}-{value}" for key, value in values.items()]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-.")[:80]
