"""``loradeck web RUN``'s server: the files of RUN/web and nothing else, under a secret path
(``/TOKEN/``: the page's own requests are relative, so they carry it; another user of the
machine, or a page in the browser, cannot guess it), with the headers wllama needs
(cross-origin isolation, so it may use several threads; ``.wasm`` as ``application/wasm``).
Refused: a foreign ``Host`` (a rebound name), an ``Origin`` that is not the page's own, any
path outside the token's, a folder, and a path or link leaving RUN/web. The model runs in the
browser that opens the page. Light module: the standard library only."""

from __future__ import annotations

import hmac
import shutil
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from loradeck.engine.system.listen import ServedHost, base_url

TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".wasm": "application/wasm", ".gguf": "application/octet-stream",
         ".json": "application/json", ".css": "text/css; charset=utf-8"}
HEADERS = {"Cross-Origin-Opener-Policy": "same-origin",
           "Cross-Origin-Embedder-Policy": "require-corp",
           "Cross-Origin-Resource-Policy": "same-origin",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def page_url(host: str, port: int, token: str) -> str:
    return f"{base_url(host, port)}/{token}/"


def resolve(folder: Path, request_path: str, token: str) -> Path | None:
    """The file of ``folder`` a request path names under ``/TOKEN/`` (``/TOKEN/`` itself is
    index.html); None for anything else: another prefix, a folder, a missing file, a path or
    a link that leaves ``folder``."""
    path = unquote(urlsplit(request_path).path)
    head, sep, rel = path.lstrip("/").partition("/")
    if not sep or not hmac.compare_digest(head.encode(), token.encode()):
        return None
    rel = rel or "index.html"
    if "\x00" in rel:
        return None
    root = folder.resolve()
    candidate = (root / rel).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


def make_server(folder: Path, host: str, port: int, token: str) -> ThreadingHTTPServer:
    served = ServedHost(host, port)

    class Handler(BaseHTTPRequestHandler):
        server_version = "loradeck-web"
        sys_version = ""

        def _send(self, head_only: bool) -> None:
            if not served.served(self.headers.get("Host")):
                self.send_error(HTTPStatus.MISDIRECTED_REQUEST, "unknown Host")
                return
            origin = self.headers.get("Origin")
            if origin is not None and not served.same_origin(origin):
                self.send_error(HTTPStatus.FORBIDDEN, "cross-origin request")
                return
            path = resolve(folder, self.path, token)
            if path is None:
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", TYPES.get(path.suffix, "application/octet-stream"))
            self.send_header("Content-Length", str(path.stat().st_size))
            self.send_header("Cache-Control", "no-cache" if path.suffix in (".html", ".js")
                             else "private, max-age=86400")
            for key, value in HEADERS.items():
                self.send_header(key, value)
            self.end_headers()
            if not head_only:
                with open(path, "rb") as fh:
                    try:
                        shutil.copyfileobj(fh, self.wfile, 1 << 20)
                    except (BrokenPipeError, ConnectionResetError):
                        pass

        def do_GET(self) -> None:  # noqa: N802
            self._send(False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._send(True)

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            pass

    return ThreadingHTTPServer((host, port), Handler)
