"""The ``loradeck`` command: the app with no subcommand, headless commands otherwise.

Only argparse and light modules load here; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from loradeck.engine.enums import GGUFType, Quantization, values

COMMANDS = {
    # name: (module under loradeck.tui.commands, help)
    "attach": ("app", "open the app on RUN's training view"),
    "init": ("init", "write a commented starter config"),
    "train": ("train", "start a training run from a config"),
    "runs": ("runs", "list runs"),
    "status": ("runs", "phase, step, loss and liveness of a run"),
    "logs": ("runs", "print a run's log"),
    "compare": ("compare", "loss curves, config differences and figures of runs side by side"),
    "stop": ("train", "save a checkpoint, then stop a run"),
    "resume": ("train", "continue a run from its newest complete checkpoint"),
    "merge": ("merge", "merge a run's adapter into its base model"),
    "export": ("export", "export a run's merged model to GGUF files for llama.cpp and Ollama"),
    "chat": ("chat", "chat with a run's model or any model"),
    "push": ("push", "push a run's merged model or adapter to the Hub"),
    "serve": ("serve", "the app in a browser: a web server on loopback, for an SSH tunnel"),
    "estimate": ("estimate", "estimate peak GPU memory of a config"),
    "doctor": ("doctor", "check GPUs, bitsandbytes, disk, Hub login and versions"),
}


TRAIN_DESCRIPTION = """\
Start a training run from CONFIG. The run is its own process: closing the terminal, losing
SSH or pressing Ctrl-C does not stop it. Without --detach this command follows the run with
one progress line and exits with its status (0 done, 1 failed, 3 stopped)."""

TRAIN_EXAMPLES = """\
examples:
  loradeck train my.yaml
  loradeck train my.yaml --detach                     print the run id, return at once
  loradeck train demo --set training.max_steps=50
  loradeck train my.yaml --set dataset.columns.instruction=question
  loradeck train my.yaml --set "dataset.system_prompt=You are #1 helper"
  loradeck train my.yaml --set "lora.target_modules=[q_proj, v_proj]"
"""

SERVE_DESCRIPTION = """\
Serve the app as a web page: each browser tab runs its own app, as a terminal would. It
listens on 127.0.0.1 by default and prints the page's URL, with a secret token new each time,
and the ssh command that brings the page to your own machine. Requests without the token, for
another host name, or from another web page's origin are refused (403). Listen elsewhere
(--host) only on a network you trust."""

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loradeck", description="Fine-tune LLMs with LoRA/QLoRA "
                                "from a terminal. With no command, opens the app.")
    p.add_argument("--demo", action="store_true", help="open the app with demo:tiny and the "
                   "demo dataset chosen (offline)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="store_true", help="print the version")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    a = sub.add_parser("attach", help=COMMANDS["attach"][1])
    a.add_argument("run", metavar="RUN")

    a = sub.add_parser("init", help=COMMANDS["init"][1], formatter_class=ConfigKeysHelp)
    a.add_argument("path", nargs="?", default="loradeck.yaml", metavar="PATH")
    a.add_argument("--demo", action="store_true", help="a config for the offline demo")
    a.add_argument("--force", action="store_true", help="overwrite an existing file")

    a = sub.add_parser("train", help=COMMANDS["train"][1], description=TRAIN_DESCRIPTION,
                       epilog=TRAIN_EXAMPLES, formatter_class=ConfigKeysHelp)
    a.add_argument("config", metavar="CONFIG", help="config file (see: loradeck init), or 'demo'")
    add_set(a)
    a.add_argument("--detach", action="store_true", help="start the run and return at once")
    add_trust(a)

    a = sub.add_parser("runs", help=COMMANDS["runs"][1])
    a.add_argument("--json", action="store_true")

    a = sub.add_parser("status", help=COMMANDS["status"][1])
    a.add_argument("run", metavar="RUN")
    a.add_argument("--json", action="store_true")

    a = sub.add_parser("logs", help=COMMANDS["logs"][1])
    a.add_argument("run", metavar="RUN")
    a.add_argument("--follow", "-f", action="store_true")

    a = sub.add_parser("compare", help=COMMANDS["compare"][1])
    a.add_argument("runs", metavar="RUN", nargs="+", help="two or more run ids or prefixes")
    a.add_argument("--json", action="store_true", help="the same data for scripts")
    a.add_argument("--height", type=int, default=20, help="chart height in lines")

    a = sub.add_parser("stop", help=COMMANDS["stop"][1])
    a.add_argument("run", metavar="RUN")
    a.add_argument("--wait", action="store_true", help="wait until the run has stopped")

    a = sub.add_parser("resume", help=COMMANDS["resume"][1])
    a.add_argument("run", metavar="RUN")
    a.add_argument("--detach", action="store_true")
    add_trust(a)

    a = sub.add_parser("merge", help=COMMANDS["merge"][1])
    a.add_argument("run", metavar="RUN")

    from loradeck.engine.serve import params as chat_params

    a = sub.add_parser("export", help=COMMANDS["export"][1])
    a.add_argument("run", metavar="RUN")
    a.add_argument("--quant", action="append", default=None, metavar="Q",
                   help=f"a GGUF type, repeatable: {', '.join(values(GGUFType))} "
                        f"(default {GGUFType.Q4_K_M})")
    a.add_argument("--out", default=None, metavar="DIR", help="where the files go "
                   "(default RUN/gguf)")

    a = sub.add_parser("chat", help=COMMANDS["chat"][1])
    a.add_argument("target", metavar="RUN|MODEL")
    a.add_argument("--base", action="store_true", help="the base model alone, no adapter")
    a.add_argument("--gguf", nargs="?", const="q4_k_m", default=None, metavar="Q",
                   help="chat with the run's exported GGUF file of type Q (default q4_k_m) "
                        "through llama.cpp; a FILE.gguf target always is")
    a.add_argument("--prompt", help="send one prompt, print the reply, exit")
    a.add_argument("--system", help="system prompt")
    # Unset flags take the model's own generation config, else ChatParams' defaults
    # (loradeck.engine.serve.params), as the app does.
    for name, kind in (("temperature", float), ("top_p", float), ("top_k", int),
                       ("max_new_tokens", int), ("repetition_penalty", float)):
        a.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None,
                       help=f"{chat_params.help_line(name)} (default: the model's generation "
                            f"config, else {chat_params.default(name)})")
    a.add_argument("--quantization", choices=values(Quantization), default=None)

    a = sub.add_parser("push", help=COMMANDS["push"][1])
    a.add_argument("run", metavar="RUN")
    a.add_argument("--repo", required=True, help="repo name, e.g. you/my-model")
    a.add_argument("--adapter", action="store_true", help="push the adapter, not the merged model")
    a.add_argument("--public", action="store_true", help="make the repo public (default private)")
    a.add_argument("--gguf", action="append", nargs="?", const="q4_k_m", default=None,
                   metavar="Q", help="also upload the run's exported GGUF file of type Q "
                                     "(default q4_k_m) and its Ollama Modelfile; repeatable")

    a = sub.add_parser("serve", help=COMMANDS["serve"][1], description=SERVE_DESCRIPTION)
    a.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only); any "
                        "other address serves the page to whoever has its token")
    a.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    a.add_argument("--demo", action="store_true", default=argparse.SUPPRESS,
                   help="open the app with demo:tiny and the demo dataset chosen")

    a = sub.add_parser("estimate", help=COMMANDS["estimate"][1], formatter_class=ConfigKeysHelp)
    a.add_argument("config", metavar="CONFIG")
    add_set(a)
    a.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                   help="compare with this much free GPU memory instead of the GPUs found")
    a.add_argument("--json", action="store_true")

    a = sub.add_parser("doctor", help=COMMANDS["doctor"][1])
    a.add_argument("--json", action="store_true")
    return p


MODEL_IN_PROCESS = ("merge", "push", "export")
"""Commands that load a model in the CLI's own process."""


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; its exit status."""
    if args.debug:
        os.environ["LORADECK_DEBUG"] = "1"
    if args.version:
        from loradeck.engine import __version__

        print(f"loradeck {__version__}")
        return 0
    module = COMMANDS[args.command][0] if args.command else "app"
    try:
        mod = importlib.import_module(f"loradeck.tui.commands.{module}")
        return int(mod.run(args) or 0)
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
    args = build_parser().parse_args()
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
