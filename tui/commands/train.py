"""``loradeck train``, ``stop`` and ``resume``: start, stop and continue detached training runs.

Without ``--detach``, train and resume follow the run with one updating progress line and exit
with the run's status (0 done, 1 failed, 3 stopped). Ctrl-C while following only detaches.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from typing import TextIO

from loradeck.engine import config as cfg
from loradeck.engine.runs.events import EventTail
from loradeck.engine.runs.progress import Progress
from loradeck.engine.runs.state import ENDED_UNSAID
from loradeck.engine.runs.store import Run
from loradeck.engine.train import launch
from loradeck.tui.commands.base import Command, ConfigKeysHelp, add_set, add_trust

POLL_S = 0.1
EXIT_WAIT_S = 30.0


def load_config(ref: str, overrides: list[str]):
    """CONFIG as given on the command line: a YAML path, or ``demo``."""
    if ref == "demo":
        return cfg.from_overrides(overrides, base=cfg.demo_config())
    return cfg.load(ref, overrides)


class LineWriter:
    """One updating line on a terminal; plain lines when the output is not a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.shown = ""

    def progress(self, text: str) -> None:
        if text == self.shown:
            return
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.out.write("\r\x1b[2K" + text[:width])
        else:
            self.out.write(text + "\n")
        self.out.flush()
        self.shown = text

    def note(self, text: str) -> None:
        if self.tty and self.shown:
            self.out.write("\r\x1b[2K")
        self.out.write(text + "\n")
        if self.tty and self.shown:
            self.out.write(self.shown)
        self.out.flush()

    def end(self) -> None:
        if self.tty and self.shown:
            self.out.write("\n")
            self.out.flush()


def follow(run: Run, offset: int = 0, out: TextIO | None = None) -> int:
    """Follow ``run``'s events from byte ``offset`` until it ends; returns its exit status."""
    out = out or sys.stdout
    writer = LineWriter(out)
    prog = Progress()
    tail = EventTail(run.events_path)
    tail.offset = offset
    def take(events: list[dict]) -> None:
        for ev in events:
            note = prog.update(ev)
            if note:
                writer.note(note)
            if ev.get("type") == "metrics":
                writer.progress(prog.line())

    try:
        while not prog.finished:
            alive = run.alive()  # read before polling: a job that ended has written its last line
            events = tail.poll()
            take(events)
            if prog.finished:
                break
            if not events and not alive and prog.done is not None:
                prog.phase = "done"  # its closing status line was torn; the done event says
                break
            if not events and not alive:
                prog.phase = "failed"
                prog.error = {"message": ENDED_UNSAID, "hint": f"see: loradeck logs {run.id}; "
                              f"continue with: loradeck resume {run.id}"}
                break
            if not events:
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        writer.end()
        print(f"detached: run {run.id} keeps going. Reattach with: loradeck logs {run.id} "
              f"--follow (or: loradeck attach {run.id}); stop it with: loradeck stop {run.id}",
              file=out, flush=True)
        return 0
    writer.end()
    deadline = time.monotonic() + EXIT_WAIT_S
    while prog.finished and run.alive() and time.monotonic() < deadline:
        time.sleep(0.1)  # the final status is written; let the process finish exiting
    code = prog.exit_code()
    if prog.phase == "failed":
        err = prog.error or {}
        line = err.get("message") or prog.message or "failed"
        hint = err.get("hint")
        print(f"loradeck: run {run.id} failed: {line}" + (f" ({hint})" if hint else ""),
              file=sys.stderr, flush=True)
    elif prog.phase == "stopped":
        print(f"run {run.id} stopped at step {prog.step}; continue with: loradeck resume "
              f"{run.id}", file=out, flush=True)
    elif prog.phase == "done":
        print(f"run {run.id} {prog.line()}", file=out, flush=True)
    return code


def train(args) -> int:
    config = load_config(args.config, args.overrides)
    run = launch.start(config, trust_remote_code=args.trust_remote_code,
                       progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.detach:
        print(run.id)
        print(f"started in the background; follow it with: loradeck logs {run.id} --follow",
              file=sys.stderr, flush=True)
        return 0
    print(f"run {run.id} started ({run.dir}); Ctrl-C detaches, the run keeps going", flush=True)
    return follow(run)


class TrainCommand(Command):
    name = "train"
    help = "start a training run from a config"
    description = """\
Start a training run from CONFIG. The run is its own process: closing the terminal, losing
SSH or pressing Ctrl-C does not stop it. Without --detach this command follows the run with
one progress line and exits with its status (0 done, 1 failed, 3 stopped)."""
    epilog = """\
examples:
  loradeck train my.yaml
  loradeck train my.yaml --detach                     print the run id, return at once
  loradeck train demo --set training.max_steps=50
  loradeck train my.yaml --set dataset.columns.instruction=question
  loradeck train my.yaml --set "dataset.system_prompt=You are #1 helper"
  loradeck train my.yaml --set "lora.target_modules=[q_proj, v_proj]"
"""
    formatter = ConfigKeysHelp

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", metavar="CONFIG",
                            help="config file (see: loradeck init), or 'demo'")
        add_set(parser)
        parser.add_argument("--detach", action="store_true",
                            help="start the run and return at once")
        add_trust(parser)

    def run(self, args: argparse.Namespace) -> int:
        return train(args)


COMMAND = TrainCommand()
