"""Each library patch in loradeck.engine.patches does what it says on the installed versions,
and fails here, loudly, when the library moves the names it patches."""

from __future__ import annotations

import inspect
import socket

import psutil

from loradeck.engine.patches import cpu_fsdp, rendezvous_bind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process().net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def test_rendezvous_store_listens_on_its_host_only():
    from torch.distributed import TCPStore
    from torch.distributed.elastic.rendezvous import (
        c10d_rendezvous_backend,
        static_tcp_rendezvous,
    )

    # the names the patch replaces are where it expects them
    assert static_tcp_rendezvous.TCPStore is TCPStore or \
        getattr(static_tcp_rendezvous.TCPStore, "loradeck_bound", False)
    assert hasattr(c10d_rendezvous_backend, "TCPStore")
    assert "master_listen_fd" in (TCPStore.__init__.__doc__ or "")

    plain_port, bound_port = _free_port(), _free_port()
    plain = TCPStore("127.0.0.1", plain_port, 1, True)
    assert _listening(plain_port) - {"127.0.0.1"}  # torch alone: every interface
    store = rendezvous_bind.bind_store_to_host(TCPStore)("127.0.0.1", bound_port, 1, True)
    assert _listening(bound_port) == {"127.0.0.1"}
    store.set("k", "v")
    client = TCPStore("127.0.0.1", bound_port, 1, False)
    assert client.get("k") == b"v"
    del plain, store, client

    rendezvous_bind.apply()
    rendezvous_bind.apply()  # once is enough; again changes nothing
    assert static_tcp_rendezvous.TCPStore.loradeck_bound
    assert c10d_rendezvous_backend.TCPStore.loradeck_bound


def test_cpu_fsdp_patch_wraps_the_state_it_expects():
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    assert "fsdp_plugin" in inspect.signature(AcceleratorState.__init__).parameters
    assert DistributedType.MULTI_CPU and DistributedType.FSDP
    cpu_fsdp.apply()
    patched = AcceleratorState.__init__
    cpu_fsdp.apply()
    assert AcceleratorState.__init__ is patched and patched.loradeck_cpu_fsdp
