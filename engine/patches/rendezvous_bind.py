"""The launcher's rendezvous store listens on the address it was given, not on every interface.

Checked against torch 2.13 and accelerate 1.15. ``accelerate launch`` runs torch's elastic agent
in its own process, and the agent's TCPStore server binds to all interfaces whatever host it is
given (``*:PORT``, thread ``pt_elastic``). TCPStore takes ``master_listen_fd``, a socket already
bound and listening; this patch binds that socket to the store's host (127.0.0.1 on one machine,
``training.main_process_ip`` across machines) for the static and c10d rendezvous backends.

Run as ``python -m loradeck.engine.patches.rendezvous_bind ACCELERATE-LAUNCH-ARGS...``: the patch, then
accelerate's own launcher. Gloo and NCCL are kept on loopback on one machine through
``GLOO_SOCKET_IFNAME``/``NCCL_SOCKET_IFNAME`` (set by loradeck.engine.train.launch).
"""

from __future__ import annotations

import socket
import sys
from typing import Any

CHECKED_WITH = {"torch": "2.13.0", "accelerate": "1.15.0"}
_sockets: list[socket.socket] = []  # kept open for the store's lifetime


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6, whichever ``host`` names)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    sock.listen(socket.SOMAXCONN)
    _sockets.append(sock)
    return sock


def bind_store_to_host(store_cls: Any) -> Any:
    """A TCPStore factory whose server listens on its host only."""

    def make(host_name: str, port: int, *args: Any, **kwargs: Any):
        is_master = kwargs.get("is_master", args[1] if len(args) > 1 else False)
        if is_master and kwargs.get("master_listen_fd") is None and port:
            kwargs["master_listen_fd"] = bound_socket(host_name, int(port)).fileno()
        return store_cls(host_name, port, *args, **kwargs)

    make.loradeck_bound = True  # type: ignore[attr-defined]
    return make


def apply() -> None:
    """Patch the rendezvous backends the elastic agent uses to create its store."""
    from torch.distributed import TCPStore
    from torch.distributed.elastic.rendezvous import (
        c10d_rendezvous_backend,
        static_tcp_rendezvous,
    )

    for module in (static_tcp_rendezvous, c10d_rendezvous_backend):
        if not getattr(module.TCPStore, "loradeck_bound", False):
            module.TCPStore = bind_store_to_host(TCPStore)


def main() -> None:
    apply()
    from accelerate.commands.launch import main as accelerate_main

    sys.argv[0] = "accelerate launch"
    accelerate_main()


if __name__ == "__main__":
    main()
