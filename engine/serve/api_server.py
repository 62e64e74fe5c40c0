"""``loradeck api``: a model as a local OpenAI-compatible endpoint, on the servers that exist.

- A GGUF file: llama-cpp-python's own server (``python -m llama_cpp.server``, its ``server``
  extra), on the file with the chat template inside the file (and so its end-of-turn token as a
  stop).
- A 16-bit model: ``transformers serve`` with the model preloaded, its tokenizer and chat
  template the ones the run saved. A run without ``merged/`` is merged into a temporary
  directory first (the server loads no PEFT adapter with loradeck's base names); the run itself
  is left as it was.

Neither server checks the ``Host`` header and ``transformers serve`` has no API key, so the
server runs on a private loopback port behind ``ApiGuard``: an aiohttp proxy on the address the
user asked for, which answers 421 to a foreign Host (DNS rebinding), 401 without the key, and
passes every other request and its streamed answer through as they come. Checked against
llama-cpp-python 0.3.36 and transformers 5.25.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loradeck.engine.errors import LoradeckError, UsageError
from loradeck.engine.serve.target import ChatTarget
from loradeck.engine.system import listen

CHECKED_WITH = {"llama-cpp-python": "0.3.36", "transformers": "5.25.0"}
INSTALL = "pip install 'loradeck[api]'"
READY_TIMEOUT_S = 600.0
GGUF_CONTEXT = 4096
NEEDS = {"llama.cpp": ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context"),
         "transformers": ("uvicorn", "fastapi")}
HOP_HEADERS = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
               "upgrade", "proxy-authorization", "proxy-authenticate", "content-length",
               "authorization"}

Say = Callable[[str], None]


@dataclass
class Backend:
    """The server that answers: ``kind`` llama.cpp or transformers, serving ``path`` under
    the model name ``name``."""

    kind: str
    path: str
    name: str
    device: str = "auto"
    cleanup: list[Path] = field(default_factory=list)  # a temporary merge, removed at the end
    cwd: str | None = None  # where the server runs: transformers serve names a local model
    #                         by the path it was given, so it is given ``name``, a link there
    extra_args: list[str] = field(default_factory=list)  # the server's own options (benches)

    def command(self, port: int) -> list[str]:
        if self.kind == "llama.cpp":
            return [sys.executable, "-m", "llama_cpp.server", "--model", self.path,
                    "--model_alias", self.name, "--host", "127.0.0.1", "--port", str(port),
                    "--n_ctx", str(GGUF_CONTEXT), "--n_threads", str(os.cpu_count() or 1),
                    # its default drops a streamed reply when the next request comes: queue
                    "--interrupt_requests", "False", *self.extra_args]
        return [sys.executable, "-c", "from transformers.cli.transformers import main; main()",
                "serve", self.name if self.cwd else self.path, "--host", "127.0.0.1",
                "--port", str(port), "--device", self.device, "--log-level", "warning",
                *self.extra_args]


def missing_extra(kind: str) -> str | None:
    """The install line when a module the ``kind`` server needs is missing; None otherwise."""
    lacking = [m for m in NEEDS[kind] if importlib.util.find_spec(m) is None]
    return f"{INSTALL} (missing: {', '.join(lacking)})" if lacking else None


def backend_for(target: ChatTarget, *, say: Say, device: str = "auto") -> Backend:
    """The server for ``target``, refused in one line before anything loads when it cannot be
    served here; a run's adapter is merged into a temporary directory first."""
    if target.model.lower().endswith(".gguf"):
        path = Path(target.model).expanduser()
        if not path.is_file():
            raise UsageError("no such file", where=str(path), hint="export it first: "
                             "loradeck export RUN, or give an existing .gguf file")
        kind, name = "llama.cpp", target.run_id or path.stem
    else:
        kind, name = "transformers", target.run_id or target.model
    problem = missing_extra(kind)
    if problem is not None:
        raise LoradeckError(f"serving with {kind} needs its server's packages", kind="config",
                            hint=problem)
    if kind == "llama.cpp":
        return Backend(kind, str(path), name)
    from loradeck.engine.models.loading import pick_device, resolve_source

    dev = pick_device(device)
    if target.adapter is None:
        src = resolve_source(target.model, target.revision)
        if src.path is None:  # a Hub id: served, and named, as it is
            return Backend(kind, src.ref, src.ref, dev)
        return _named(Backend(kind, str(src.path), name, dev))
    run_dir = target.run_id or _run_of(Path(target.adapter))
    if not run_dir:
        raise UsageError("an adapter directory outside any run is not served",
                         where=target.adapter,
                         hint="serve the run it belongs to, one of its checkpoints, or a "
                              "model merged with it")
    return _named(_merged_copy(target, run_dir, dev, say))


def _run_of(adapter: Path) -> str | None:
    """The run directory a checkpoint (RUN/checkpoints/checkpoint-N) belongs to."""
    run = adapter.resolve().parent.parent
    return str(run) if adapter.resolve().parent.name == "checkpoints" and \
        (run / "config.yaml").is_file() else None


def _named(backend: Backend) -> Backend:
    """``backend`` run beside a link called its name, so that its local model is listed and
    asked for by that name rather than by a path (``:`` and ``@`` would read as a GGUF file
    and a revision)."""
    backend.name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(backend.name).name).strip("-") \
        or "model"
    home = Path(tempfile.mkdtemp(prefix="loradeck-api-name-"))
    (home / backend.name).symlink_to(Path(backend.path).resolve(), target_is_directory=True)
    backend.cwd = str(home)
    backend.cleanup.append(home)
    return backend


def _merged_copy(target: ChatTarget, run_ref: str, device: str, say: Say) -> Backend:
    from loradeck.engine.publish import merge
    from loradeck.engine.runs.store import RunStore

    run = RunStore().resolve(run_ref)
    adapter = Path(target.adapter or run.adapter_dir)
    checkpoint = adapter.resolve() != run.adapter_dir.resolve()
    work = Path(tempfile.mkdtemp(prefix="loradeck-api-"))
    say(f"merging {'checkpoint ' + adapter.name + ' of ' if checkpoint else ''}run {run.id} "
        f"into {work} to serve it (the run is left as it was"
        + ("" if checkpoint else "; `loradeck merge` keeps a merged copy") + ")")
    name = f"{run.id}-{adapter.name}" if checkpoint else run.id
    try:
        merge.merge_into(run, work / "model", device, say, adapter=adapter)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Backend("transformers", str(work / "model"), name, device, cleanup=[work])


class ApiGuard:
    """Which requests reach the server: the served Host, and the key when there is one."""

    def __init__(self, host: str, port: int, key: str | None) -> None:
        self.hosts = listen.ServedHost(host, port)
        self.key = key

    def refusal(self, headers: Any) -> tuple[int, str] | None:
        """(status, why) for a request with these headers; None when it may go on."""
        if not self.hosts.served(headers.get("Host")):
            return 421, "this server answers only at the address it was started on"
        origin = headers.get("Origin")  # a browser's page: only one served from here
        if origin is not None and not self.hosts.served(urlsplit(origin).netloc or None):
            return 403, "cross-origin request: a web page may not use this endpoint"
        if self.key is not None:
            given = headers.get("Authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), self.key.encode()):
                return 401, "missing or wrong API key (send Authorization: Bearer KEY)"
        return None


def error_body(status: int, message: str) -> str:
    kind = {401: "authentication_error", 403: "permission_error"}.get(
        status, "invalid_request_error")
    return json.dumps({"error": {"message": message, "type": kind, "code": status}})


def start_lines(host: str, port: int, name: str, key: str | None, kind: str) -> list[str]:
    """What ``loradeck api`` prints once the endpoint answers."""
    url = listen.base_url(host, port) + "/v1"
    lines = [f"loradeck: {name} ({kind}) is served at {url}  (Ctrl+C stops it)",
             "  the OpenAI client: OpenAI(base_url=" + repr(url) + ", api_key="
             + ("<your key>" if key else "'none'") + f"), model={name!r}"]
    if listen.is_loopback(host):
        lines.append(f"from your own machine: {listen.tunnel_command(port)}  then use "
                     f"http://localhost:{port}/v1")
    else:
        lines.append(f"warning: the endpoint is open to anyone who can reach {host}:{port} "
                     "and has the key (--host 127.0.0.1 and an SSH tunnel keep it private)")
    return lines


class Endpoint:
    """The server process on a private port and the guard in front of it."""

    def __init__(self, backend: Backend, host: str, port: int, key: str | None) -> None:
        self.backend, self.host, self.port, self.key = backend, host, port, key
        self.guard = ApiGuard(host, port, key)
        self.inner = listen.free_port()
        self.proc: subprocess.Popen | None = None
        self.runner: Any = None
        self.session: Any = None

    def spawn(self, log: Any = None) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen(self.backend.command(self.inner), env=env,
                                     cwd=self.backend.cwd,
                                     stdout=log or subprocess.DEVNULL,
                                     stderr=log or subprocess.DEVNULL, start_new_session=True)

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until the server lists its model (or it exits: one line with its last output)."""
        import aiohttp

        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.inner}/v1/models"
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise LoradeckError(f"the {self.backend.kind} server exited (status "
                                        f"{self.proc.returncode}) before it answered",
                                        kind="model", hint="run again with --debug to see "
                                                           "its output")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise LoradeckError(f"the {self.backend.kind} server did not answer in {timeout:.0f} s",
                            kind="internal")

    async def start_proxy(self) -> None:
        import aiohttp
        from aiohttp import web

        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application(client_max_size=64 * 2 ** 20)
        app.router.add_route("*", "/{path:.*}", self.forward)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port).start()

    async def forward(self, request: Any) -> Any:
        """One request to the server, its answer streamed back chunk by chunk."""
        from aiohttp import web

        why = self.guard.refusal(request.headers)
        if why is not None:
            return web.Response(status=why[0], text=error_body(*why),
                                content_type="application/json")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        url = f"http://127.0.0.1:{self.inner}{request.rel_url}"
        body = await request.read()
        async with self.session.request(request.method, url, headers=headers,
                                        data=body or None) as upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS})
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:  # the client left (or closed after [DONE])
                pass
            return response

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for path in self.backend.cleanup:
            shutil.rmtree(path, ignore_errors=True)


async def serve(backend: Backend, host: str, port: int, key: str | None, say: Say, *,
                debug: bool = False, stop: asyncio.Event | None = None) -> None:
    """Run the endpoint until ``stop`` is set (or the task is cancelled: Ctrl+C)."""
    endpoint = Endpoint(backend, host, port, key)
    say(f"starting the {backend.kind} server for {backend.name}…")
    endpoint.spawn(None if not debug else sys.stderr)
    try:
        await endpoint.wait_ready()
        await endpoint.start_proxy()
        for line in start_lines(host, port, backend.name, key, backend.kind):
            say(line)
        await (stop or asyncio.Event()).wait()
    finally:
        await endpoint.stop()
