"""Where a server of loradeck listens, and which requests it answers: loopback or not, the port
free before anything loads, the SSH tunnel command, and the Host check that blocks DNS
rebinding (a web page in the user's browser reaching the server through its own tunnel).
Light module: the standard library only."""

from __future__ import annotations

import getpass
import ipaddress
import os
import socket
from urllib.parse import urlsplit

WILDCARDS = ("0.0.0.0", "::", "")


def is_loopback(host: str) -> bool:
    """Does ``host`` listen on this machine alone?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost may resolve anywhere
        return False


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_free(host: str, port: int) -> None:
    """Raise the OSError that listening on ``host``:``port`` would raise (in use, no such
    address), before the server says it listens."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def tunnel_command(port: int) -> str:
    """The ssh command that brings a server on this machine to a laptop's localhost:``port``."""
    link = os.environ.get("SSH_CONNECTION", "").split()
    host = link[2] if len(link) == 4 else socket.gethostname()
    return f"ssh -N -L {port}:127.0.0.1:{port} {getpass.getuser()}@{host}"


def base_url(host: str, port: int) -> str:
    """``http://host:port``; for a wildcard host (0.0.0.0, ::), this machine's name."""
    if host in WILDCARDS:
        host = socket.getfqdn()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ServedHost:
    """Which ``Host`` headers name this server: the bound address or localhost, on its port
    (any of this machine's names and any address typed as digits when bound to a wildcard:
    digits can never be a rebound name)."""

    def __init__(self, host: str, port: int) -> None:
        self.port = port
        names = {"localhost"}
        if host in WILDCARDS:
            names |= {socket.gethostname(), socket.getfqdn()}
        else:
            names.add(host)
        self.names = {n.lower().strip("[]") for n in names}
        self.any_ip = host in WILDCARDS

    def served(self, authority: str | None) -> bool:
        """``host:port`` (a Host header, or an Origin's) is this server's."""
        if not authority:
            return False
        try:
            url = urlsplit(f"http://{authority}")
            name, port = (url.hostname or "").lower(), url.port or 80
        except ValueError:
            return False
        return port == self.port and (name in self.names or (self.any_ip and is_ip(name)))

    def same_origin(self, origin: str | None) -> bool:
        """``origin`` (an Origin header) is a page served by this server itself."""
        if not origin:
            return False
        try:
            url = urlsplit(origin)
        except ValueError:
            return False
        return url.scheme in ("http", "https") and self.served(url.netloc)


def ensure_free(host: str, port: int) -> None:
    """``check_free``, a port in use or an address this machine lacks said in one line."""
    import errno

    from loradeck.engine.errors import UsageError

    try:
        check_free(host, port)
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES) or isinstance(
                exc, socket.gaierror):
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}",
                             where="--host/--port",
                             hint="pick another with --port, or stop what uses it") from exc
        raise
