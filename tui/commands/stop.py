"""``loradeck stop RUN [--wait]``: save a checkpoint, then stop a run."""

from __future__ import annotations

import argparse

from loradeck.engine.runs.store import RunStore
from loradeck.engine.train import launch
from loradeck.tui.commands.base import Command, add_run


def stop(args) -> int:
    run = RunStore().resolve(args.run)
    launch.stop(run)  # raises when the run is not running
    if not args.wait:
        print(f"stop requested: run {run.id} saves a checkpoint at its current step, then exits "
              f"(watch it with: loradeck status {run.id})")
        return 0
    print(f"stopping run {run.id}: it saves a checkpoint at its current step (Ctrl-C stops "
          "waiting, not the stop)", flush=True)
    summary = launch.wait_until_ended(run)
    print(f"run {run.id}: {summary['phase']}"
          + (f" ({summary['message']})" if summary.get("message") else ""))
    return 0 if summary["phase"] == "stopped" else 1


class StopCommand(Command):
    name = "stop"
    help = "save a checkpoint, then stop a run"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run(parser)
        parser.add_argument("--wait", action="store_true", help="wait until the run has stopped")

    def run(self, args: argparse.Namespace) -> int:
        return stop(args)


COMMAND = StopCommand()
