"""``loradeck attach RUN``: the app, on RUN's training view."""

from __future__ import annotations

import argparse

from loradeck.tui.commands.app import open_app
from loradeck.tui.commands.base import Command, add_run


class AttachCommand(Command):
    name = "attach"
    help = "open the app on RUN's training view"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run(parser)

    def run(self, args: argparse.Namespace) -> int:
        return open_app(run_ref=args.run)


COMMAND = AttachCommand()
