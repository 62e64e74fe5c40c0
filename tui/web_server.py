"""``loradeck serve``: the app in a browser, through textual-serve (checked against 1.1.3).

Each browser tab runs its own ``loradeck`` process, as a terminal would. The page is
textual-serve's own, less the web font it links from the internet: everything it loads comes
from this server.

textual-serve checks neither the Host nor the Origin header and has no login, so a web page in
the user's browser could drive the app through the SSH tunnel. ``AppServer`` adds an aiohttp
middleware (the hook aiohttp gives every application) that answers 403 before any session starts
unless the Host is the served one (the bound address or localhost, on the served port), a
browser's Origin is that same address, and the request carries the secret token ``serve`` prints:
in the URL (``?token=``) once, then in an HttpOnly cookie the page sends with its WebSocket.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
import shlex
import sys
from pathlib import Path

from aiohttp import web
from textual_serve.server import Server

from loradeck.engine.runs import paths
from loradeck.engine.system.listen import ServedHost, base_url, is_loopback, tunnel_command

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
TEMPLATES = Path(sys.modules[Server.__module__].__file__ or "").with_name("templates")
REMOTE_FONT = re.compile(r"<link[^>]*fonts\.googleapis\.com[^>]*>\s*", re.S)


def app_command(*, demo: bool = False) -> str:
    """The shell command each browser tab runs: this Python's ``loradeck``."""
    argv = [sys.executable, "-m", "loradeck.tui.cli", *(["--demo"] if demo else [])]
    return shlex.join(argv)


TOKEN_PARAM = "token"


def page_url(host: str, port: int, token: str | None = None) -> str:
    """The page's address (with the token when given); for a wildcard host (0.0.0.0, ::), this
    machine's name."""
    url = base_url(host, port)
    return f"{url}/?{TOKEN_PARAM}={token}" if token else url


def start_lines(host: str, port: int, token: str) -> list[str]:
    """What ``loradeck serve`` prints once it listens."""
    shown = f"[{host}]" if ":" in host else host
    lines = [f"loradeck: the app is at {page_url(host, port, token)}  (Ctrl+C stops the "
             "server; training runs keep going)"]
    if is_loopback(host):
        lines.append(f"from your own machine: {tunnel_command(port)}  then open "
                     f"{page_url('localhost', port, token)}")
    else:
        lines.append(f"warning: the page is open to anyone who can reach {shown}:{port} and "
                     "sees this token: the app, its runs and your Hub token (--host 127.0.0.1 "
                     "and an SSH tunnel keep it private)")
    return lines


class Guard:
    """Which requests reach the app: the served Host and Origin, and the secret token."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.cookie = f"loradeck-serve-{port}"
        served = ServedHost(host, port)
        self.served, self.same_origin = served.served, served.same_origin

    def has_token(self, request: web.Request) -> bool:
        given = request.query.get(TOKEN_PARAM) or request.cookies.get(self.cookie) or ""
        return hmac.compare_digest(given.encode(), self.token.encode())

    def refusal(self, request: web.Request) -> str | None:
        """Why ``request`` is refused; None when it may go on."""
        if request.path.startswith("/static/"):  # the page's scripts and styles: no secrets
            return None if self.served(request.host) else "unknown host"
        if not self.served(request.host):
            return "unknown host"
        origin = request.headers.get("Origin")
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        if (origin is not None or websocket) and not self.same_origin(origin):
            return "cross-origin request"
        if not self.has_token(request):
            return "missing or wrong token"
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        why = self.refusal(request)
        if why is not None:
            return web.Response(status=403, text=f"loradeck serve: forbidden ({why}); open "
                                "the URL that `loradeck serve` printed\n")
        response = await handler(request)
        if request.query.get(TOKEN_PARAM):  # the page's WebSocket sends it back as a cookie
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="Strict",
                                path="/")
        return response


def private_templates() -> Path:
    """textual-serve's templates with the remote font link taken out, under the cache dir."""
    out = paths.cache_dir() / "web-templates"
    out.mkdir(parents=True, exist_ok=True)
    for page in TEMPLATES.glob("*.html"):
        text = REMOTE_FONT.sub("", page.read_text(encoding="utf-8"))
        target = out / page.name
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
    return out


class AppServer(Server):
    """textual-serve's Server behind the Guard, printing loradeck's start lines instead of
    its banner."""

    def __init__(self, *, host: str, port: int, demo: bool = False,
                 token: str | None = None) -> None:
        super().__init__(app_command(demo=demo), host=host, port=port, title="loradeck",
                         public_url=page_url(host, port), templates_path=private_templates())
        self.token = token or secrets.token_urlsafe(24)
        self.guard = Guard(host, port, self.token)
        self.lines = start_lines(host, port, self.token)

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self.guard.middleware)
        return app

    async def handle_index(self, request: web.Request) -> web.StreamResponse:
        # The page's WebSocket goes to the address the page was opened at (checked by the
        # guard), so the browser sends the token cookie it was given there.
        self.public_url = f"{request.scheme}://{request.host}"
        return await super().handle_index(request)

    async def on_startup(self, app) -> None:
        # aiohttp runs this before it listens: say where the app is once it does
        self._announce = asyncio.ensure_future(self._print_when_listening())

    async def _print_when_listening(self) -> None:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else "::1" if self.host == "::" \
            else self.host
        while True:
            try:
                _reader, writer = await asyncio.open_connection(host, self.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            break
        for line in self.lines:
            print(line, flush=True)
