"""``loradeck resume RUN [--detach]``: continue a run from its newest complete checkpoint."""

from __future__ import annotations

import argparse
import sys

from loradeck.engine.runs.store import RunStore
from loradeck.engine.train import launch
from loradeck.tui.commands.base import Command, add_run, add_trust
from loradeck.tui.commands.train import follow


def resume(args) -> int:
    run = RunStore().resolve(args.run)
    offset = run.events_path.stat().st_size if run.events_path.exists() else 0
    launch.resume(run, trust_remote_code=args.trust_remote_code)
    cp = run.latest_checkpoint()
    if args.detach:
        print(run.id)
        print(f"resumed in the background from {cp.name if cp else 'the beginning'}; follow it "
              f"with: loradeck logs {run.id} --follow", file=sys.stderr, flush=True)
        return 0
    print(f"run {run.id} resumed from {cp.name if cp else 'the beginning'}; Ctrl-C detaches",
          flush=True)
    return follow(run, offset=offset)


class ResumeCommand(Command):
    name = "resume"
    help = "continue a run from its newest complete checkpoint"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run(parser)
        parser.add_argument("--detach", action="store_true")
        add_trust(parser)

    def run(self, args: argparse.Namespace) -> int:
        return resume(args)


COMMAND = ResumeCommand()
