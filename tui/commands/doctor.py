"""``loradeck doctor``: GPUs, CUDA, bitsandbytes, disk, Hub login and versions (never a token)."""

from __future__ import annotations

import argparse
import json

from loradeck.engine.system import doctor
from loradeck.tui.commands.base import Command


def check(args) -> int:
    rep = doctor.report()
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print("loradeck doctor")
        for line in doctor.text(rep):
            print(f"  {line}")
    return 0


class DoctorCommand(Command):
    name = "doctor"
    help = "check GPUs, bitsandbytes, disk, Hub login and versions"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        return check(args)


COMMAND = DoctorCommand()
