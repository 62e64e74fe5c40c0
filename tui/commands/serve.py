"""``loradeck serve``: the app in a browser (textual-serve)."""

from __future__ import annotations

import argparse

from loradeck.tui.commands.base import Command


def serve(args) -> int:
    from loradeck.engine.system.listen import ensure_free
    from loradeck.tui.web_server import AppServer

    ensure_free(args.host, args.port)
    AppServer(host=args.host, port=args.port, demo=getattr(args, "demo", False)).serve()
    return 0


class ServeCommand(Command):
    name = "serve"
    help = "the app in a browser: a web server on loopback, for an SSH tunnel"
    description = """\
Serve the app as a web page: each browser tab runs its own app, as a terminal would. It
listens on 127.0.0.1 by default and prints the page's URL, with a secret token new each time,
and the ssh command that brings the page to your own machine. Requests without the token, for
another host name, or from another web page's origin are refused (403). Listen elsewhere
(--host) only on a network you trust."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1",
                            help="address to listen on (default 127.0.0.1: this machine only); "
                                 "any other address serves the page to whoever has its token")
        parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
        parser.add_argument("--demo", action="store_true", default=argparse.SUPPRESS,
                            help="open the app with demo:tiny and the demo dataset chosen")

    def run(self, args: argparse.Namespace) -> int:
        return serve(args)


COMMAND = ServeCommand()
