"""``loradeck serve``: the app in a browser (textual-serve)."""

from __future__ import annotations

import errno
import socket

from loradeck.engine.errors import UsageError


def run(args) -> int:
    from loradeck.tui.web_server import AppServer, check_free

    try:
        check_free(args.host, args.port)
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES) or isinstance(
                exc, socket.gaierror):
            raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}",
                             where="--host/--port",
                             hint="pick another with --port, or stop what uses it") from exc
        raise
    AppServer(host=args.host, port=args.port, demo=getattr(args, "demo", False)).serve()
    return 0
