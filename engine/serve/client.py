"""The client of the chat worker process (loradeck.engine.serve.worker): ``AsyncChatClient``
speaks the protocol (the app uses it on its own loop); ``ChatClient`` runs that same client on
a loop of its own, for the CLI, the benches and tests.

Light: no torch here. The worker is started with this Python, speaks JSON lines on its
stdin/stdout, and exits when its stdin closes, so it dies with the process that started it.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import itertools
import json
import os
import sys
import threading
import weakref
from collections.abc import AsyncIterator
from typing import Any

from loradeck.engine.errors import LoradeckError
from loradeck.engine.serve import replies as protocol
from loradeck.engine.serve.replies import Failed, Finished, ModelLoaded, Reply

WORKER_MODULE = "loradeck.engine.serve.worker"
LOAD_TIMEOUT_S = 1800.0     # a large model from a slow disk
REPLY_TIMEOUT_S = 600.0     # the longest wait for the next reply while generating


def worker_command() -> list[str]:
    return [sys.executable, "-m", WORKER_MODULE]


def worker_env() -> dict[str, str]:
    """The environment of the worker: ours, unbuffered."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def load_request(model: str, adapter: str | os.PathLike | None = None,
                 quantization: str = "none", **extra: Any) -> dict[str, Any]:
    req = {"type": "load", "id": "load", "model": str(model),
           "adapter": str(adapter) if adapter else None, "quantization": quantization or "none"}
    req.update({k: v for k, v in extra.items() if v is not None})
    return req


def generate_request(id: str, messages: list[dict[str, str]], params: dict[str, Any] | None,
                     adapter: bool) -> dict[str, Any]:
    return {"type": "generate", "id": id, "messages": messages, "params": params or {},
            "adapter": adapter}


def _died(tail: collections.deque[str]) -> LoradeckError:
    last = [ln for ln in tail if ln.strip()]
    detail = f": {last[-1].strip()}" if last else ""
    return LoradeckError(f"the chat worker exited{detail}", kind="internal",
                         hint="run again with --debug to see its output")


class ChatStream:
    """The replies to one generate request, read synchronously: Tokens, then one Finished (or
    Failed). A read cut off (Ctrl-C) is picked up where it was by the next one."""

    def __init__(self, client: ChatClient, replies: AsyncIterator[Reply], id: str) -> None:
        self.client, self.replies, self.id = client, replies, id
        self.finished = False
        self._pending: concurrent.futures.Future | None = None

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> Reply:
        if self.finished:
            raise StopIteration
        if self._pending is None:
            self._pending = self.client.submit(anext(self.replies))
        try:
            reply = self._pending.result()
        except StopAsyncIteration:
            self.finished = True
            raise StopIteration from None
        finally:
            if self._pending is not None and self._pending.done():
                self._pending = None
        if isinstance(reply, (Finished, Failed)):
            self.finished = True
        return reply

    def cancel(self) -> None:
        self.client.cancel(self.id)

    def close(self) -> None:
        """Stop reading this reply; the worker is told to stop it if it is still running."""
        if not self.finished:
            self.finished = True
            self.client.submit(self.replies.aclose()).result()


class ChatClient:
    """The chat worker driven synchronously (the CLI, the benches, tests): the one protocol
    client, ``AsyncChatClient``, on an event loop of its own in a thread."""

    def __init__(self, debug: bool | None = None) -> None:
        self.client = AsyncChatClient(debug)
        self._ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chat-client",
                                        daemon=True)
        self._thread.start()

    def submit(self, coro: Any) -> concurrent.futures.Future:
        """Run ``coro`` on the client's loop; its future."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    @property
    def proc(self) -> asyncio.subprocess.Process | None:
        return self.client.proc

    @property
    def info(self) -> dict[str, Any] | None:
        return self.client.info

    @property
    def stderr_tail(self) -> list[str]:
        return self.client.stderr_tail

    def spawn(self) -> int:
        """Start the worker process if it is not running; returns its pid."""
        _live.add(self)
        return self.submit(self.client.spawn()).result()

    def start(self, model: str, adapter: str | os.PathLike | None = None,
              quantization: str = "none", **extra: Any) -> dict[str, Any]:
        """Start the worker (once) and load ``model`` (+ ``adapter``); returns the model info."""
        _live.add(self)
        return self.submit(self.client.start(model, adapter, quantization, **extra)).result()

    def generate(self, messages: list[dict[str, str]], params: dict[str, Any] | None = None,
                 adapter: bool = True, id: str | None = None) -> ChatStream:
        """Send a generate request; iterate the result for Tokens and the final Finished/Failed."""
        rid = id or f"s{next(self._ids)}"
        return ChatStream(self, self.client.generate(messages, params, adapter, id=rid), rid)

    def complete(self, messages: list[dict[str, str]], params: dict[str, Any] | None = None,
                 adapter: bool = True) -> Finished:
        """Generate and wait: the Finished reply (raises LoradeckError when it failed)."""
        for reply in self.generate(messages, params, adapter):
            if isinstance(reply, Failed):
                raise reply.error()
            if isinstance(reply, Finished):
                return reply
        raise LoradeckError("the chat worker ended the reply without finishing it",
                            kind="internal")

    def send(self, request: dict[str, Any]) -> None:
        self.submit(self.client.send(request)).result()

    def cancel(self, id: str) -> None:
        self.submit(self.client.cancel(id)).result()

    def close(self, timeout: float = 10.0) -> None:
        """Ask the worker to stop (killed if it lingers), then stop the client's loop."""
        _live.discard(self)
        if self._loop.is_closed():
            return
        try:
            self.submit(self.client.close(timeout)).result(timeout + 15)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_live: weakref.WeakSet[ChatClient] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for client in list(_live):
        client.close(timeout=3)


class AsyncChatClient:
    """A chat worker process driven from asyncio (the Textual app)."""

    def __init__(self, debug: bool | None = None) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] | None = None
        self.debug = bool(os.environ.get("LORADECK_DEBUG")) if debug is None else debug
        self._queues: dict[str, asyncio.Queue[ModelLoaded | Reply | None]] = {}
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._ended = False

    async def start(self, model: str, adapter: str | os.PathLike | None = None,
                    quantization: str = "none", **extra: Any) -> dict[str, Any]:
        """Start the worker (once) and load ``model``; returns the model info."""
        await self.spawn()
        q = self._queue("load")
        await self.send(load_request(model, adapter, quantization, **extra))
        try:
            while True:
                reply = await self._get(q, LOAD_TIMEOUT_S)
                if isinstance(reply, ModelLoaded):
                    self.info = reply.model or {}
                    return self.info
                if isinstance(reply, Failed):
                    raise reply.load_error()
        finally:
            self._queues.pop("load", None)

    async def spawn(self) -> int:
        """Start the worker process if it is not running; returns its pid."""
        if self.proc is None:
            self.proc = await asyncio.create_subprocess_exec(
                *worker_command(), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=worker_env(), limit=2 ** 22)
            self._ended = False
            self._tasks = [asyncio.create_task(self._read_stdout()),
                           asyncio.create_task(self._read_stderr())]
        return self.proc.pid

    def _queue(self, id: str) -> asyncio.Queue[ModelLoaded | Reply | None]:
        q: asyncio.Queue[ModelLoaded | Reply | None] = asyncio.Queue()
        if self._ended:
            q.put_nowait(None)
        self._queues[id] = q
        return q

    async def _read_stdout(self) -> None:
        assert self.proc and self.proc.stdout
        while True:
            try:
                line = await self.proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue
            if not line:
                break
            try:
                reply = protocol.parse(json.loads(line.decode("utf-8", errors="replace")))
            except json.JSONDecodeError:
                continue
            if reply is not None:
                q = self._queues.get(reply.id)
                if q is not None:
                    q.put_nowait(reply)
        self._ended = True
        for q in self._queues.values():
            q.put_nowait(None)

    async def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            text = line.decode("utf-8", errors="replace").rstrip("\n")
            self._stderr.append(text)
            if self.debug:
                print(text, file=sys.stderr)

    async def _get(self, q: asyncio.Queue[ModelLoaded | Reply | None], timeout: float
                   ) -> ModelLoaded | Reply:
        try:
            reply = await asyncio.wait_for(q.get(), timeout)
        except TimeoutError:
            raise LoradeckError(f"the chat worker sent nothing for {timeout:.0f} s",
                                kind="internal") from None
        if reply is None:
            raise _died(self._stderr)
        return reply

    async def send(self, request: dict[str, Any]) -> None:
        if self.proc is None or self.proc.stdin is None or self._ended:
            raise _died(self._stderr)
        try:
            self.proc.stdin.write((json.dumps(request, ensure_ascii=False) + "\n").encode())
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise _died(self._stderr) from None

    async def generate(self, messages: list[dict[str, str]], params: dict[str, Any] | None = None,
                       adapter: bool = True, id: str | None = None
                       ) -> AsyncIterator[Reply]:
        """Async iterator over Tokens, then the Finished (or Failed).

        Pass ``id`` to be able to ``cancel(id)`` from elsewhere; each reply carries it too.
        """
        rid = id or f"g{next(self._ids)}"
        q = self._queue(rid)
        finished = False
        try:
            await self.send(generate_request(rid, messages, params, adapter))
            while True:
                reply = await self._get(q, REPLY_TIMEOUT_S)
                if isinstance(reply, ModelLoaded):
                    continue
                finished = isinstance(reply, (Finished, Failed))
                yield reply
                if finished:
                    return
        finally:
            self._queues.pop(rid, None)
            if not finished and self.proc is not None and not self._ended:
                with contextlib.suppress(Exception):  # the consumer left early: stop the reply
                    await self.send({"type": "cancel", "id": rid})

    async def cancel(self, id: str) -> None:
        await self.send({"type": "cancel", "id": id})

    async def close(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.write(b'{"type": "shutdown"}\n')
                proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    @property
    def stderr_tail(self) -> list[str]:
        return list(self._stderr)

    async def __aenter__(self) -> AsyncChatClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
