"""``loradeck merge RUN``: merge a run's adapter into its 16-bit base model, check it, save it."""

from __future__ import annotations

import argparse

from loradeck.engine.runs.store import RunStore
from loradeck.tui.commands.base import Command, add_checkpoint, add_run


def merge_run(args) -> int:
    from loradeck.engine.publish import merge

    target = RunStore().resolve(args.run)
    # one line, before any heavy import, when there is no adapter (or no such checkpoint)
    merge.check_mergeable(target, args.checkpoint)
    merge.quiet_libraries()
    adapter = target.checkpoint(args.checkpoint) if args.checkpoint is not None \
        else target.adapter_dir
    print(f"merging run {target.id}: {adapter} into its base model", flush=True)
    result = merge.merge(target, say=lambda line: print(line, flush=True),
                         checkpoint=args.checkpoint)
    print(f"merged model: {result.path}" + (f" (from {result.checkpoint}; the final adapter "
                                            "is as it was)" if result.checkpoint else ""))
    return 0


class MergeCommand(Command):
    name = "merge"
    help = "merge a run's adapter into its base model"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run(parser)
        add_checkpoint(parser, "merge checkpoint N's adapter, not the final one")

    def run(self, args: argparse.Namespace) -> int:
        return merge_run(args)


COMMAND = MergeCommand()
