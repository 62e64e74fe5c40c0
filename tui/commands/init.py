"""``loradeck init``: write a commented starter config."""

from __future__ import annotations

import argparse
from pathlib import Path

from loradeck.engine import config as cfg
from loradeck.engine.errors import LoradeckError
from loradeck.tui.commands.base import Command, ConfigKeysHelp


def write_starter(args) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        raise LoradeckError("file exists", kind="usage", where=str(path),
                            hint="choose another path or add --force")
    text = cfg.starter_text(demo=args.demo)
    cfg.validate(__import__("yaml").safe_load(text), source="starter")  # never write a bad one
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}; start it with: loradeck train {path}")
    return 0


class InitCommand(Command):
    name = "init"
    help = "write a commented starter config"
    formatter = ConfigKeysHelp

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("path", nargs="?", default="loradeck.yaml", metavar="PATH")
        parser.add_argument("--demo", action="store_true", help="a config for the offline demo")
        parser.add_argument("--force", action="store_true", help="overwrite an existing file")

    def run(self, args: argparse.Namespace) -> int:
        return write_starter(args)


COMMAND = InitCommand()
