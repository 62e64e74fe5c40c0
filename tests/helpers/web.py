"""The browser page's tests share wllama's runtime: fetched once per session by npm (into the
session's cache). When the npm registry cannot be reached from where the tests run, they are
skipped naming why; any other failure of the fetch fails them."""

from __future__ import annotations

from pathlib import Path

import pytest


def wllama_or_skip() -> Path:
    from loradeck.engine.errors import LoradeckError
    from loradeck.engine.publish import web_runtime

    try:
        return web_runtime.runtime()
    except LoradeckError as exc:
        if str(exc.kind) == "network":
            pytest.skip(f"wllama could not be fetched here: {exc.line()}")
        raise
