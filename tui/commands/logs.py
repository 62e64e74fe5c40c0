"""``loradeck logs RUN [--follow] [--raw]``: a run's events as readable lines, or its raw
output."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from loradeck.engine.runs import run_files
from loradeck.engine.runs.events import EventTail, read_events
from loradeck.engine.runs.store import Run, RunStore
from loradeck.tui.commands.base import Command, add_run
from loradeck.tui.event_text import event_text

POLL_S = 0.25


def human_line(ev: dict[str, Any]) -> str | None:
    """One event as a line of the human log: its clock time and its text in full (None for
    nothing worth a line)."""
    text = event_text(ev, full=True)
    if text is None:
        return None
    return f"{time.strftime('%H:%M:%S', time.localtime(ev.get('t', 0)))} {text}"


def _print_events(events: list[dict[str, Any]]) -> None:
    for ev in events:
        line = human_line(ev)
        if line:
            print(line)
    sys.stdout.flush()


def _open_log(run: Run):
    return os.fdopen(run_files.open_fd(run.log_path), "rb")


def logs(args) -> int:
    """loradeck's own lines by default; ``--raw`` prints the job's raw output (train.log:
    library progress bars, warnings and tracebacks) instead."""
    run: Run = RunStore().resolve(args.run)
    if args.raw:
        return _raw(run, args.follow)
    tail = EventTail(run.events_path)
    _print_events(tail.poll())
    try:
        while args.follow:
            alive = run.alive()
            events = tail.poll()
            _print_events(events)
            if not alive and not events:
                break
            if not events:
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        return 0
    if args.follow:
        summary = run.summary(read_events(run.events_path))
        print(f"--- run {run.id}: {summary['phase']} ---")
    if run.log_path.exists() and sys.stdout.isatty():
        print(f"(the job's raw output: loradeck logs {run.id} --raw)", file=sys.stderr)
    return 0


def _raw(run: Run, follow: bool) -> int:
    raw = _open_log(run) if run.log_path.exists() else None
    if raw is not None:
        sys.stdout.write(raw.read().decode("utf-8", errors="replace"))
        sys.stdout.flush()
    try:
        while follow:
            alive = run.alive()
            if raw is None and run.log_path.exists():
                raw = _open_log(run)
            chunk = raw.read() if raw is not None else b""
            if chunk:
                sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                sys.stdout.flush()
            elif not alive:
                break
            else:
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        return 0
    return 0


class LogsCommand(Command):
    name = "logs"
    help = "print a run's log"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run(parser)
        parser.add_argument("--follow", "-f", action="store_true",
                            help="keep printing until the run ends")
        parser.add_argument("--raw", action="store_true",
                            help="the job's raw output (train.log) instead of loradeck's lines")

    def run(self, args: argparse.Namespace) -> int:
        return logs(args)


COMMAND = LogsCommand()
