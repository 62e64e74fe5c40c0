"""``loradeck api TARGET``: the model as a local OpenAI-compatible endpoint."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from loradeck.engine.enums import GGUFType
from loradeck.engine.errors import UsageError
from loradeck.engine.system import listen
from loradeck.tui.commands.base import Command

KEY_ENV = "LORADECK_API_KEY"


def api(args) -> int:
    from loradeck.engine.serve import api_server
    from loradeck.engine.serve.target import resolve

    key = args.api_key or os.environ.get(KEY_ENV) or None
    if not listen.is_loopback(args.host) and key is None:
        raise UsageError(f"--host {args.host} without an API key would let anyone who reaches "
                         "the port use this machine's GPU and model", where="--host",
                         hint=f"add --api-key KEY (or set {KEY_ENV}), or keep --host 127.0.0.1 "
                              "and reach it through an SSH tunnel")
    listen.ensure_free(args.host, args.port)
    target = resolve(args.target, gguf=args.gguf)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    backend = api_server.backend_for(target, say=say)
    try:
        asyncio.run(api_server.serve(backend, args.host, args.port, key, say,
                                     debug=bool(os.environ.get("LORADECK_DEBUG"))))
    except KeyboardInterrupt:
        say("stopped")
    return 0


class ApiCommand(Command):
    name = "api"
    help = "serve a run's model, a model or a GGUF file as an OpenAI-compatible endpoint"
    description = f"""\
Serve TARGET (what loradeck chat takes: a run, a model directory or Hub id, or a .gguf file)
at /v1/models, /v1/chat/completions (streamed or not) and /v1/completions: a GGUF file through
llama-cpp-python's server, any other model through transformers serve. It listens on
127.0.0.1 by default and prints the ssh command that brings it to your own machine. Requests
for another host name are refused (421), and with --api-key (or {KEY_ENV}) requests without
the key too (401). Another --host needs a key."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("target", metavar="RUN|MODEL|FILE.gguf")
        parser.add_argument("--gguf", nargs="?", const=GGUFType.Q4_K_M.value, default=None,
                            metavar="Q", help="serve the run's exported GGUF file of type Q "
                            f"(default {GGUFType.Q4_K_M}) through llama.cpp")
        parser.add_argument("--host", default="127.0.0.1",
                            help="address to listen on (default 127.0.0.1: this machine only)")
        parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
        parser.add_argument("--api-key", default=None,
                            help=f"the key clients must send (default: ${KEY_ENV}, else none; "
                                 f"prefer {KEY_ENV}: a command line is visible to other users)")

    def run(self, args: argparse.Namespace) -> int:
        return api(args)


COMMAND = ApiCommand()
