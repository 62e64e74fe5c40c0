"""``loradeck web RUN [--host 127.0.0.1] [--port 8008] [--quant Q]``: serve the run's browser
page (RUN/web, exported first when missing), on loopback unless asked; the model runs in the
browser that opens it, on that machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from loradeck.engine.enums import GGUFType, values
from loradeck.engine.runs.store import RunStore
from loradeck.tui.commands.base import Command, add_run

DEFAULT_QUANT = GGUFType.Q4_K_M


def page(run, quant: str | None) -> str:
    """RUN/web for ``quant`` (or whatever was exported), written when missing."""
    from loradeck.engine.publish import web_export

    have = web_export.manifest(web_export.web_dir(run))
    if have is None or (quant and have.get("quant") != quant):
        web_export.export_web(run, quant or DEFAULT_QUANT, say=lambda s: print(s, flush=True))
    return str(web_export.web_dir(run))


def serve(args: argparse.Namespace) -> int:
    import secrets

    from loradeck.engine.publish import page_server
    from loradeck.engine.system import listen

    run = RunStore().resolve(args.run)
    listen.ensure_free(args.host, args.port)
    folder = page(run, args.quant)
    token = secrets.token_urlsafe(18)  # in the page's path: its relative requests carry it
    server = page_server.make_server(Path(folder), args.host, args.port, token)
    print(f"loradeck: the page is at {page_server.page_url(args.host, args.port, token)}",
          flush=True)
    print(f"from your own machine: {listen.tunnel_command(args.port)}, then open "
          f"{page_server.page_url('127.0.0.1', args.port, token)}", flush=True)
    print("the model runs in the browser that opens the page, on that machine; this server "
          "only sends the files of " + folder, flush=True)
    if not listen.is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who has the address above can fetch "
              "the model file", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


class WebCommand(Command):
    name = "web"
    help = "serve the run's chat page that runs its GGUF in your own browser"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run(parser)
        parser.add_argument("--host", default="127.0.0.1", help="where to listen (default "
                                                                "loopback)")
        parser.add_argument("--port", type=int, default=8008, help="default 8008")
        parser.add_argument("--quant", choices=values(GGUFType), default=None,
                            help=f"the GGUF type the page runs (default: the one exported, "
                                 f"else {DEFAULT_QUANT})")

    def run(self, args: argparse.Namespace) -> int:
        return serve(args)


COMMAND = WebCommand()
