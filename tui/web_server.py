"""``loradeck serve``: the app in a browser, through textual-serve (checked against 1.1.3).

Each browser tab runs its own ``loradeck`` process, as a terminal would. The page is
textual-serve's own, less the web font it links from the internet: everything it loads comes
from this server.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import re
import shlex
import socket
import sys
from pathlib import Path

from textual_serve.server import Server

from loradeck.engine.runs import paths

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
TEMPLATES = Path(sys.modules[Server.__module__].__file__ or "").with_name("templates")
REMOTE_FONT = re.compile(r"<link[^>]*fonts\.googleapis\.com[^>]*>\s*", re.S)


def is_loopback(host: str) -> bool:
    """Does ``host`` listen on this machine alone?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost may resolve anywhere
        return False


def app_command(*, demo: bool = False) -> str:
    """The shell command each browser tab runs: this Python's ``loradeck``."""
    argv = [sys.executable, "-m", "loradeck.tui.cli", *(["--demo"] if demo else [])]
    return shlex.join(argv)


def tunnel_command(port: int) -> str:
    """The ssh command that brings this server to a laptop's localhost:``port``."""
    link = os.environ.get("SSH_CONNECTION", "").split()
    host = link[2] if len(link) == 4 else socket.gethostname()
    return f"ssh -N -L {port}:127.0.0.1:{port} {getpass.getuser()}@{host}"


def check_free(host: str, port: int) -> None:
    """Raise the OSError that listening on ``host``:``port`` would raise (in use, no such
    address), before the server says it listens."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def page_url(host: str, port: int) -> str:
    """The page's address; for a wildcard host (0.0.0.0, ::), this machine's name."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def start_lines(host: str, port: int) -> list[str]:
    """What ``loradeck serve`` prints once it listens."""
    shown = f"[{host}]" if ":" in host else host
    lines = [f"loradeck: the app is at {page_url(host, port)}  (Ctrl+C stops the server; "
             "training runs keep going)"]
    if is_loopback(host):
        lines.append(f"from your own machine: {tunnel_command(port)}  then open "
                     f"http://localhost:{port}")
    else:
        lines.append(f"warning: the page has no login: anyone who can reach {shown}:{port} "
                     "can use this app, its runs and your Hub token (--host 127.0.0.1 and an "
                     "SSH tunnel keep it private)")
    return lines


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
    """textual-serve's Server that prints loradeck's start lines instead of its banner."""

    def __init__(self, *, host: str, port: int, demo: bool = False) -> None:
        super().__init__(app_command(demo=demo), host=host, port=port, title="loradeck",
                         public_url=page_url(host, port), templates_path=private_templates())
        self.lines = start_lines(host, port)

    async def on_startup(self, app) -> None:
        for line in self.lines:
            print(line, flush=True)
