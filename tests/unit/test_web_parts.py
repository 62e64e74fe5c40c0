"""The browser page's parts that need no browser: where wllama comes from (npm, the integrity
hash, the one line without npm) and which requests the page's server answers."""

from __future__ import annotations

import pytest

from loradeck.engine.errors import LoradeckError
from loradeck.engine.publish import page_server, web_runtime


def test_without_npm_or_a_cached_package_one_line_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("LORADECK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(web_runtime.shutil, "which", lambda _name: None)
    with pytest.raises(LoradeckError) as err:
        web_runtime.runtime()
    line = err.value.line()
    assert "the browser page needs wllama 3.13.0, and npm is not installed" in line
    assert "apt-get install npm" in line and str(tmp_path / "cache" / "wllama") in line


def test_a_package_that_is_not_the_pinned_one_is_refused_and_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("LORADECK_CACHE", str(tmp_path / "cache"))
    fake = web_runtime.folder() / web_runtime.tarball_name()
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"not the package")
    with pytest.raises(LoradeckError, match="is not the wllama 3.13.0 package loradeck knows"):
        web_runtime.tarball()
    assert not fake.exists()


def test_the_server_answers_the_files_of_the_folder_under_its_token_and_nothing_else(tmp_path):
    web = tmp_path / "web"
    (web / "wllama").mkdir(parents=True)
    (web / "index.html").write_text("page")
    (web / "wllama" / "index.js").write_text("js")
    (tmp_path / "secret.txt").write_text("no")
    (web / "link.txt").symlink_to(tmp_path / "secret.txt")
    token = "s3cret"
    resolve = page_server.resolve
    assert resolve(web, "/s3cret/", token) == (web / "index.html").resolve()
    assert resolve(web, "/s3cret/wllama/index.js?v=1", token) == \
        (web / "wllama/index.js").resolve()
    for path in ("/", "/index.html", "/s3cre/index.html", "/S3CRET/index.html", "/s3cret",
                 "/s3cret/wllama/", "/s3cret/../secret.txt", "/s3cret/%2e%2e/secret.txt",
                 "/s3cret/link.txt", "/s3cret/none", "/s3cret/index.html%00.js"):
        assert resolve(web, path, token) is None, path


def test_the_server_refuses_a_foreign_host_a_foreign_origin_and_a_missing_token(tmp_path):
    import threading
    import urllib.error
    import urllib.request

    from loradeck.engine.system.listen import free_port

    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("page")
    port = free_port()
    server = page_server.make_server(web, "127.0.0.1", port, "tok")
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def status(path: str, **headers: str) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        assert status("/tok/") == 200
        assert status("/tok/", Origin=f"http://127.0.0.1:{port}") == 200  # its own page
        assert status("/tok/", Origin=f"http://localhost:{port}") == 200
        assert status("/tok/", Host=f"evil.example:{port}") == 421  # a rebound name
        assert status("/tok/", Origin="http://evil.example") == 403  # a page elsewhere
        assert status("/tok/", Origin="null") == 403
        assert status("/tok/", Origin=f"http://127.0.0.1:{port + 1}") == 403
        assert status("/") == 404 and status("/index.html") == 404  # no token: nothing
    finally:
        server.shutdown()
        server.server_close()
