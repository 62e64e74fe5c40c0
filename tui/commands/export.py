"""``loradeck export RUN [--quant Q]... [--out DIR] [--web]``: GGUF files of a run's merged
model, each checked in llama.cpp (merged first when the run is not); ``--web`` also writes the
browser page that runs one of them (RUN/web)."""

from __future__ import annotations

import argparse
import importlib.util

from loradeck.engine.enums import GGUFType, values
from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs.store import RunStore
from loradeck.tui.commands.base import Command, add_checkpoint, add_run

INSTALL_HINT = "install the GGUF extra: pip install 'loradeck[gguf]'"


def export_run(args) -> int:
    target = RunStore().resolve(args.run)
    missing = [m for m in ("gguf", "llama_cpp") if importlib.util.find_spec(m) is None]
    if missing:
        raise LoradeckError(f"GGUF export needs {' and '.join(missing)}", kind="config",
                            hint=INSTALL_HINT)
    if target.alive():
        raise LoradeckError(f"run {target.id} is training", kind="usage",
                            hint="export it once it is done (or stop it first)")
    from loradeck.engine.publish import gguf_export, merge

    quants = gguf_export.check_quants(args.quant or [])
    if args.web and args.out:
        raise LoradeckError("--web writes RUN/web beside the run's own GGUF files",
                            kind="usage", where="--out", hint="drop --out, or copy RUN/web "
                                                              "anywhere afterwards")
    if args.out:
        gguf_export.check_out_dir(args.out)
    if args.checkpoint is not None:
        merge.check_mergeable(target, args.checkpoint)
    elif not target.merged_dir.is_dir():
        merge.check_mergeable(target)
    merge.quiet_libraries()
    if args.checkpoint is not None and merge.needs_merge(target, args.checkpoint):
        print(f"merging checkpoint-{args.checkpoint}'s adapter first", flush=True)
        merge.merge(target, say=lambda line: print(line, flush=True),
                    checkpoint=args.checkpoint)
    if args.web:
        from loradeck.engine.publish import web_export

        web_export.export_web(target, quants[0], say=lambda line: print(line, flush=True))
        print(web_export.serve_hint(target.id))
        return 0
    print(f"exporting run {target.id} to GGUF: {', '.join(quants)}", flush=True)
    report = gguf_export.export(target, quants, out_dir=args.out,
                                say=lambda line: print(line, flush=True))
    for line in gguf_export.report_lines(report):
        print(line)
    return 0


class ExportCommand(Command):
    name = "export"
    help = "export a run's merged model to GGUF files for llama.cpp and Ollama"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run(parser)
        parser.add_argument("--quant", action="append", default=None, metavar="Q",
                            help=f"a GGUF type, repeatable: {', '.join(values(GGUFType))} "
                                 f"(default {GGUFType.Q4_K_M})")
        parser.add_argument("--out", default=None, metavar="DIR",
                            help="where the files go (default RUN/gguf)")
        add_checkpoint(parser, "export checkpoint N's adapter merged, not the final one")
        parser.add_argument("--web", action="store_true",
                            help="write RUN/web: a chat page that runs the GGUF (of the first "
                                 "--quant) in your own browser, through wllama")

    def run(self, args: argparse.Namespace) -> int:
        return export_run(args)


COMMAND = ExportCommand()
