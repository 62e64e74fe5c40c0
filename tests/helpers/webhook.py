"""A local HTTP server that keeps what is POSTed to it: where apprise's ``json://`` URLs
deliver in the tests (loopback only)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Hook:
    port: int
    received: list[dict] = field(default_factory=list)  # {path, headers, body (parsed JSON)}

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.received]


@contextmanager
def webhook() -> Iterator[Hook]:
    hook = Hook(0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            size = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(size)
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"raw": raw.decode("utf-8", "replace")}
            hook.received.append({"path": self.path, "headers": dict(self.headers),
                                  "body": body})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
