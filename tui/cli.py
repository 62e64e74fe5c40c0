"""The ``loradeck`` command: the app with no subcommand, headless commands otherwise.

Only argparse and light modules load here; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from loradeck.tui import startup_trace
from loradeck.tui.commands.base import Command

startup_trace.mark("cli imported")

COMMANDS = ("attach", "init", "train", "queue", "runs", "status", "logs", "compare", "stop", "resume",
            "eval", "merge", "export", "chat", "api", "push", "web", "serve", "estimate", "doctor")
"""The subcommands, in the order the help lists them: each is the module
``loradeck.tui.commands.NAME`` whose ``COMMAND`` registers and runs it."""


def command(name: str) -> Command:
    """The command called ``name`` (``app``: what runs with no command)."""
    return importlib.import_module(f"loradeck.tui.commands.{name}").COMMAND


APP_FLAGS = ("--demo", "--debug", "--version")
"""The options of ``loradeck`` itself: with these alone, the app opens."""


def app_parser() -> argparse.ArgumentParser:
    """The parser of ``loradeck`` without its subcommands: what the app needs."""
    p = argparse.ArgumentParser(prog="loradeck", description="Fine-tune LLMs with LoRA/QLoRA "
                                "from a terminal. With no command, opens the app.")
    p.add_argument("--demo", action="store_true", help="open the app with demo:tiny and the "
                   "demo dataset chosen (offline)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="store_true", help="print the version")
    p.set_defaults(command=None)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = app_parser()
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        command(name).register(sub)
    return p


MODEL_IN_PROCESS = ("merge", "push", "export")
"""Commands that load a model in the CLI's own process."""


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments; with the app's options alone, no subcommand's parser is built (their
    modules' imports would cost the app's first frame about a quarter of a second)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if all(arg in APP_FLAGS for arg in argv):
        args = app_parser().parse_args(argv)
        startup_trace.mark("arguments parsed")
        return args
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_command(parse(argv))


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; its exit status."""
    if args.debug:
        os.environ["LORADECK_DEBUG"] = "1"
    if args.version:
        from loradeck.engine import __version__

        print(f"loradeck {__version__}")
        return 0
    try:
        return int(command(args.command or "app").run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `loradeck logs RUN | head`: the reader left; end quietly
        quiet_stdout()
        return 0
    except Exception as exc:  # one line for a person, the traceback only with --debug
        if args.debug:
            raise
        from loradeck.engine.errors import LoradeckError, error_text
        from loradeck.engine.runs.lock import disk_full, storage_error

        if disk_full(exc):  # a write anywhere on a full disk: the disk message, not a crash
            exc = storage_error(exc, Path(getattr(exc, "filename", None) or os.getcwd()))
        if isinstance(exc, LoradeckError):
            print(f"loradeck: {error_text(exc)}", file=sys.stderr)
            return exc.kind.exit_status
        print(f"loradeck: internal error: {error_text(exc)} "
              "(run again with --debug for the traceback)", file=sys.stderr)
        return 1


def quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush into a closed pipe is silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def entry() -> None:
    """The ``loradeck`` command. The commands that load a model in this process (merge, push)
    end without the interpreter's teardown of torch and the model (most of a second with
    demo:tiny, more with a large model), their output flushed first; the others (the app among
    them, whose exit hooks close its chat workers) end as usual."""
    args = parse()
    code = run_command(args)
    if args.command in MODEL_IN_PROCESS and "torch" in sys.modules:
        from loradeck.engine.system.process_exit import exit_now

        exit_now(code)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_stdout()
    sys.exit(code)

if __name__ == "__main__":
    entry()
