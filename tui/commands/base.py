"""A command of the ``loradeck`` CLI: its name, help and arguments, and what it does.

Each command is a class in its own module under ``loradeck.tui.commands``; ``cli.py`` only
loops over them. A module imports what its command needs when it runs, so building the
parser stays light.
"""

from __future__ import annotations

import argparse
from typing import Any, ClassVar


class Command:
    """One subcommand: ``register`` adds its parser, ``run`` does it and returns the exit
    status."""

    name: ClassVar[str]
    help: ClassVar[str]
    description: ClassVar[str | None] = None
    epilog: ClassVar[str | None] = None
    formatter: ClassVar[type[argparse.HelpFormatter] | None] = None

    def register(self, subparsers: Any) -> argparse.ArgumentParser:
        kwargs: dict[str, Any] = {"help": self.help}
        if self.description:
            kwargs["description"] = self.description
        if self.epilog:
            kwargs["epilog"] = self.epilog
        if self.formatter:
            kwargs["formatter_class"] = self.formatter
        parser = subparsers.add_parser(self.name, **kwargs)
        self.add_arguments(parser)
        return parser

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The command's own arguments (none by default)."""

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


SET_HELP = ("override one config key, at any depth: training.max_steps=100, "
            "dataset.columns.instruction=question. The value is literal text unless it is "
            "clearly YAML: a number, true/false, null, or a flow list [a, b] or mapping {k: v}. "
            "Repeat for more keys")


class ConfigKeysHelp(argparse.RawDescriptionHelpFormatter):
    """Help that ends with every config key and its description, generated from the config
    fields (imported only when the help is printed)."""

    def format_help(self) -> str:
        from loradeck.engine import config as cfg

        width = max(len(k) for k in cfg.keys()) + 2
        rows = [f"  {key:<{width}}{cfg.help_of(key)}" for key in cfg.keys()]
        return (super().format_help() + "\nconfig keys (in CONFIG, or with --set KEY=VALUE):\n"
                + "\n".join(rows) + "\n")


def add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help=SET_HELP)


def add_trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model.trust_remote_code: run the Python files that come "
                             "with the model (they are named first)")


def add_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run id or a unique start of one")


def add_checkpoint(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--checkpoint", type=int, default=None, metavar="N",
                        help=f"{help} (loradeck eval --checkpoints picks the best)")
