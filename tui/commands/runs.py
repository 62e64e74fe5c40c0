"""``loradeck runs``, ``status RUN`` and ``logs RUN``: what runs exist and how they are doing."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from loradeck.engine.runs.store import RunStore
from loradeck.tui.commands.base import Command


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def _num(v: Any, fmt: str = "{:.4f}") -> str:
    return fmt.format(v) if isinstance(v, (int, float)) else "-"


def _steps(s: dict[str, Any]) -> str:
    return f"{s['step']}/{s['max_steps']}" if s.get("max_steps") else str(s.get("step") or 0)


def list_runs(args) -> int:
    summaries = [r.summary() for r in RunStore().list()]
    if args.json:
        print(json.dumps(summaries, indent=2, ensure_ascii=False))
        return 0
    if not summaries:
        print("no runs yet; start one with: loradeck train CONFIG (or: loradeck train demo)")
        return 0
    rows = [("RUN", "PHASE", "STEP", "LOSS", "ALIVE", "STARTED")]
    rows += [(s["id"], s["phase"], _steps(s), _num(s["loss"]), "yes" if s["alive"] else "no",
              _when(s["started"])) for s in summaries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


class RunsCommand(Command):
    name = "runs"
    help = "list runs"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        return list_runs(args)


COMMAND = RunsCommand()
