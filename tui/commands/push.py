"""``loradeck push RUN --repo NAME [--adapter] [--public] [--gguf [Q]]... [--web]``: publish a
run on the Hub (with its exported GGUF files and its browser page when asked)."""

from __future__ import annotations

import argparse

from loradeck.engine.enums import GGUFType
from loradeck.engine.runs.events import EventWriter
from loradeck.engine.runs.store import RunStore
from loradeck.tui.commands.base import Command, add_checkpoint, add_run


def push_run(args) -> int:
    from loradeck.engine.publish.hub import push_run, quiet_hub_output

    quiet_hub_output()
    target = RunStore().resolve(args.run)
    url = push_run(target, args.repo, adapter=args.adapter, public=args.public,
                   gguf=getattr(args, "gguf", None) or [], web=args.web,
                   checkpoint=args.checkpoint,
                   events=EventWriter(target.events_path),
                   progress=lambda line: print(line, flush=True))
    print(url, flush=True)
    return 0


class PushCommand(Command):
    name = "push"
    help = "push a run's merged model or adapter to the Hub"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run(parser)
        parser.add_argument("--repo", required=True, help="repo name, e.g. you/my-model")
        parser.add_argument("--adapter", action="store_true",
                            help="push the adapter, not the merged model")
        parser.add_argument("--public", action="store_true",
                            help="make the repo public (default private)")
        parser.add_argument("--gguf", action="append", nargs="?", const=GGUFType.Q4_K_M.value,
                            default=None, metavar="Q",
                            help="also upload the run's exported GGUF file of type Q (default "
                                 f"{GGUFType.Q4_K_M}) and its Ollama Modelfile; repeatable")
        parser.add_argument("--web", action="store_true",
                            help="also upload the run's browser page (RUN/web, from loradeck "
                                 "export RUN --web) as web/: a static Space as it is")
        add_checkpoint(parser, "merge and push checkpoint N's adapter, not the final one")

    def run(self, args: argparse.Namespace) -> int:
        return push_run(args)


COMMAND = PushCommand()
