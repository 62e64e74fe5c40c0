"""``loradeck api`` for a model as a child process, with a fresh key on a free loopback port:
the Chat screen's endpoint (ctrl+n, stopped with the screen's model or the app) and the
evaluation's judge (stopped when the evaluation ends). Light module: the standard library
only (the server's packages load in the child)."""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import subprocess
import sys
import threading
import weakref
from dataclasses import dataclass

from loradeck.engine.errors import LoradeckError
from loradeck.engine.system import listen

READY_MARK = "is served at"


@dataclass
class EndpointInfo:
    """What the screen shows: the address, the key and the model it serves."""

    url: str
    key: str
    ref: str


class ServedModel:
    """One ``loradeck api`` child; ``start`` blocks until it serves (call it in a thread)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.info: EndpointInfo | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, ref: str) -> EndpointInfo:
        self.stop()
        port, key = listen.free_port(), f"sk-loradeck-{secrets.token_urlsafe(18)}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loradeck.tui.cli", "api", ref, "--port", str(port)],
            env={**os.environ, "LORADECK_API_KEY": key}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        _live.add(self)
        last = ""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            last = line.strip() or last
            if READY_MARK in line:
                self.info = EndpointInfo(f"http://127.0.0.1:{port}/v1", key, ref)
                threading.Thread(target=_drain, args=(self.proc.stderr,), daemon=True).start()
                return self.info
        self.proc.wait()
        self.proc = None
        raise LoradeckError(last.removeprefix("loradeck: ") or "the endpoint did not start",
                            kind="usage")

    def stop(self) -> None:
        proc, self.proc, self.info = self.proc, None, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _drain(stream) -> None:
    """Read what the child still says, so that a full pipe never holds it up."""
    for _line in stream:
        pass


_live: weakref.WeakSet[ServedModel] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for endpoint in list(_live):
        endpoint.stop()
