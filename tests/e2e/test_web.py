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
from urllib.parse import urlencode

import pytest

from loradeck.engine.system.listen import free_port
from tests.conftest import ROOT, run_cli
from tests.helpers.jobs import JOB_ENV

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
PROMPT = "한국의 수도는 어디인가요?"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.skipif(shutil.which("npm") is None or CHROMIUM is None
                                 or CHROMEDRIVER is None,
                                 reason="npm, chromium and chromium-driver are needed")]


@pytest.fixture(scope="module")
def web_run(demo_model, tmp_path_factory):
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


def test_the_browser_answers_as_loradeck_chat_does(web_run, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    home, run_dir, env = web_run
    port = free_port()
    full = dict(os.environ, **env, SE_AVOID_STATS="true",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = subprocess.Popen([sys.executable, "-m", "loradeck.tui.cli", "web", run_dir.name,
                               "--port", str(port)], env=full, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    driver = None
    try:
        first = server.stdout.readline()
        assert first.strip() == f"loradeck: the page is at http://127.0.0.1:{port}/", first
        assert server.stdout.readline().startswith(f"from your own machine: ssh -N -L {port}:")
        base = f"http://127.0.0.1:{port}/"
        # the headers wllama needs, and what the server refuses
        status, headers, _ = get(base + "wllama/wllama.wasm")
        assert status == 200 and headers["Content-Type"] == "application/wasm"
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert get(base, host=f"evil.example:{port}")[0] == 421
        for path in ("wllama/", "../config.yaml", "%2e%2e/config.yaml", "nothing.js"):
            assert get(base + path)[0] == 404, path

        options = Options()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--enable-unsafe-webgpu",
                    f"--user-data-dir={tmp_path / 'chromium'}",
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        query = urlencode({"prompt": PROMPT, "max_tokens": 16, "temperature": 0})
        driver.get(f"{base}index.html?{query}")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = driver.execute_script("return document.getElementById('reply').dataset.done")
            status_line = driver.execute_script(
                "return document.getElementById('status').textContent")
            if done or status_line.startswith("error"):
                break
            time.sleep(0.5)
        assert done == "1", status_line
        reply = driver.execute_script("return document.getElementById('reply').textContent")
        backend = driver.execute_script("return document.getElementById('backend').textContent")
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
    assert backend == "WebGPU" or backend.startswith("CPU, ")
    assert resources and all(url.startswith(base) for url in resources), resources
    gguf = run_dir / "gguf" / f"{run_dir.name}-q8_0.gguf"
    r = run_cli(["chat", str(gguf), "--prompt", PROMPT, "--temperature", "0",
                 "--repetition-penalty", "1.0", "--max-new-tokens", "16"], env=env,
                timeout=300)
    assert r.returncode == 0, r.stderr
    assert reply.strip() and reply == r.stdout.strip()
