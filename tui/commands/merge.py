"""``loradeck merge RUN``: merge a run's adapter into its 16-bit base model, check it, save it."""

from __future__ import annotations

import argparse

from loradeck.engine.runs.store import RunStore
from loradeck.tui.commands.base import Command, add_run


def merge_run(args) -> int:
    from loradeck.engine.publish import merge

    target = RunStore().resolve(args.run)
    merge.check_mergeable(target)  # one line, before any heavy import, when there is no adapter
    merge.quiet_libraries()
    print(f"merging run {target.id}: {target.adapter_dir} into its base model", flush=True)
    result = merge.merge(target, say=lambda line: print(line, flush=True))
    print(f"merged model: {result.path}")
    return 0


class MergeCommand(Command):
    name = "merge"
    help = "merge a run's adapter into its base model"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run(parser)

    def run(self, args: argparse.Namespace) -> int:
        return merge_run(args)


COMMAND = MergeCommand()
