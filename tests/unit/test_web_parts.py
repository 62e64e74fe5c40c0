"""The browser page's parts that need no browser: where wllama comes from (npm, the integrity
hash, the one line without npm) and which files the page's server answers."""

from __future__ import annotations

import pytest

from loradeck.engine.errors import LoradeckError
from loradeck.engine.publish import web_runtime, web_server


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


def test_the_server_answers_the_files_of_the_folder_and_nothing_else(tmp_path):
    web = tmp_path / "web"
    (web / "wllama").mkdir(parents=True)
    (web / "index.html").write_text("page")
    (web / "wllama" / "index.js").write_text("js")
    (tmp_path / "secret.txt").write_text("no")
    (web / "link.txt").symlink_to(tmp_path / "secret.txt")
    assert web_server.resolve(web, "/") == (web / "index.html").resolve()
    assert web_server.resolve(web, "/wllama/index.js?v=1") == (web / "wllama/index.js").resolve()
    for path in ("/wllama/", "/../secret.txt", "/%2e%2e/secret.txt", "/link.txt", "/none",
                 "/index.html%00.js"):
        assert web_server.resolve(web, path) is None, path
