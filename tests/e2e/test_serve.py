"""``loradeck serve``: the app in a real headless browser (Debian's chromium, driven by
chromedriver through Selenium), its start lines, and what it refuses."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loradeck.tui import web_server
from tests.conftest import ROOT, run_cli

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

# The page's terminal (xterm.js) draws on a canvas; this hook, run before the page's own
# scripts, keeps the xterm Terminal object textual-serve's client creates, so the test reads
# the rows the browser shows from xterm's buffer.
KEEP_TERMINAL = """
Object.defineProperty(Object.prototype, 'terminal', {
  configurable: true,
  get() { return undefined; },
  set(v) {
    Object.defineProperty(this, 'terminal', {value: v, writable: true, configurable: true,
                                             enumerable: true});
    if (v && v.buffer && v.buffer.active) { window.__loradeckTerm = v; }
  },
});
"""
READ_ROWS = """
const t = window.__loradeckTerm;
if (!t) { return null; }
const b = t.buffer.active, rows = [];
for (let i = 0; i < t.rows; i++) {
  const line = b.getLine(b.viewportY + i);
  rows.push(line ? line.translateToString(true) : '');
}
return rows.join('\\n');
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_loopback_prints_the_tunnel_command(monkeypatch):
    monkeypatch.setenv("SSH_CONNECTION", "203.0.113.9 50022 198.51.100.7 22")
    lines = web_server.start_lines("127.0.0.1", 8000, "T0KEN")
    assert lines[0].startswith("loradeck: the app is at http://127.0.0.1:8000/?token=T0KEN ")
    assert "ssh -N -L 8000:127.0.0.1:8000 " in lines[1]
    assert lines[1].endswith("then open http://localhost:8000/?token=T0KEN")
    assert lines[1].split("ssh -N -L 8000:127.0.0.1:8000 ")[1].startswith(
        f"{os.environ.get('USER') or __import__('getpass').getuser()}@198.51.100.7")
    assert not any("warning" in line for line in lines)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.4", "::", "gpu-box"])
def test_any_other_address_warns_that_the_page_is_open(host):
    lines = web_server.start_lines(host, 8000, "T0KEN")
    assert not web_server.is_loopback(host)
    assert lines[-1].startswith("warning: the page is open to anyone who can reach")
    assert not any(line.startswith("from your own machine") for line in lines)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_addresses(host):
    assert web_server.is_loopback(host)


def test_the_page_loads_nothing_from_the_internet():
    original = (web_server.TEMPLATES / "app_index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" in original  # what textual-serve's page links
    page = (web_server.private_templates() / "app_index.html").read_text(encoding="utf-8")
    assert "googleapis" not in page and "https://" not in page
    assert page == web_server.REMOTE_FONT.sub("", original)


def test_a_port_in_use_is_refused_in_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_cli(["serve", "--port", str(port)], timeout=60)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"loradeck: --host/--port: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(pick another with --port, or stop what uses it)"]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="chromium and chromium-driver are not installed")
def test_the_app_in_a_real_browser(tmp_path: Path, demo_model):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", SE_AVOID_STATS="true")
    server = subprocess.Popen([sys.executable, "-m", "loradeck.tui.cli", "serve", "--port",
                               str(port), "--demo"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    driver = None
    try:
        first = server.stdout.readline()
        assert first.startswith(f"loradeck: the app is at http://127.0.0.1:{port}/?token="), first
        url = first.split()[5]
        assert server.stdout.readline().startswith(f"from your own machine: ssh -N -L "
                                                   f"{port}:127.0.0.1:{port} ")
        options = Options()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1100,700", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    f"--user-data-dir={tmp_path / 'chromium'}",
                    # nothing but this server resolves: the page must need nothing else
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                               {"source": KEEP_TERMINAL})
        driver.get(url)  # the URL serve printed, with its token

        def shown(predicate, what: str, timeout: float = 120) -> str:
            deadline = time.monotonic() + timeout
            text = None
            while time.monotonic() < deadline:
                text = driver.execute_script(READ_ROWS)
                if text and predicate(text):
                    return text
                time.sleep(0.3)
            raise AssertionError(f"the browser never showed {what}; it shows:\n{text}")

        model = shown(lambda t: "demo:tiny" in t and "architecture" in t, "the Model screen")
        assert "LlamaForCausalLM" in model
        driver.find_element("css selector", ".xterm-helper-textarea").send_keys("d")
        data = shown(lambda t: "What is the capital of France?" in t, "the Data screen")
        assert "instruction rows" in data and "LlamaForCausalLM" not in data
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        assert resources and all(url.startswith(f"http://127.0.0.1:{port}/")
                                 or url.startswith(f"ws://127.0.0.1:{port}/")
                                 for url in resources), resources
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)


def served(tmp_path: Path):
    """``loradeck serve`` on a free port: (process, port, the token it printed)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = subprocess.Popen([sys.executable, "-m", "loradeck.tui.cli", "serve", "--port",
                               str(port)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    first = server.stdout.readline()
    assert "?token=" in first, first
    return server, port, first.split("?token=")[1].split()[0]


def request(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    """One GET to the server, with exactly these headers (Host among them); its status and
    the start of its body (none for a WebSocket upgrade)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        response = conn.getresponse()
        body = "" if response.status == 101 else response.read(400).decode("utf-8", "replace")
        return response.status, body
    finally:
        conn.close()


WEBSOCKET = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.mark.slow
def test_foreign_origins_hosts_and_missing_tokens_are_refused_before_a_session(tmp_path):
    server, port, token = served(tmp_path)
    try:
        here, origin = f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"
        page = f"/?token={token}"
        # the page: the printed URL works, at the bound address and at localhost
        status, body = request(port, page, {"Host": here})
        assert status == 200 and body.lstrip().lower().startswith("<!doctype html>")
        assert request(port, page, {"Host": f"localhost:{port}"})[0] == 200
        # DNS rebinding: a name that only resolves here, a foreign port
        for host in ("attacker.example", f"attacker.example:{port}", f"127.0.0.1:{port + 1}"):
            status, body = request(port, page, {"Host": host})
            assert (status, body.startswith("loradeck serve: forbidden (unknown host)")) == (
                403, True), (host, status, body)
        # no token, a wrong one
        for path in ("/", "/?token=", f"/?token={token}x", "/ws"):
            status, body = request(port, path, {"Host": here})
            assert status == 403 and "token" in body, (path, status, body)
        # the WebSocket: a foreign Origin, none, or no token is refused; the page's is taken
        ws = f"/ws?token={token}&width=80&height=24"
        for headers in ({"Origin": "http://attacker.example"}, {"Origin": "null"}, {},
                        {"Origin": f"http://127.0.0.1:{port + 1}"}):
            status, body = request(port, ws, {"Host": here, **WEBSOCKET, **headers})
            assert status == 403, (headers, status)
        status, _ = request(port, "/ws?width=80&height=24",
                            {"Host": here, "Origin": origin, **WEBSOCKET})
        assert status == 403  # the right origin without the token
        status, _ = request(port, "/ws?width=80&height=24",
                            {"Host": here, "Origin": origin, **WEBSOCKET,
                             "Cookie": f"loradeck-serve-{port}={token}"})
        assert status == 101  # the page's own WebSocket, with the cookie the page was given
        status, _ = request(port, ws, {"Host": f"localhost:{port}",
                                       "Origin": f"http://localhost:{port}", **WEBSOCKET})
        assert status == 101
        # a foreign page cannot read a response either: a cross-origin GET is refused
        assert request(port, page, {"Host": here, "Origin": "http://attacker.example"})[0] == 403
    finally:
        server.terminate()
        server.wait(timeout=30)
