"""One error-to-text function, in the engine, hides Hub tokens wherever a message reaches a
person: the CLI's line, a screen's error, a notification."""

from __future__ import annotations

import asyncio

from textual.widgets import Static

from loradeck.engine.errors import LoradeckError, error_text
from loradeck.tui.app import LoradeckApp
from tests.conftest import run_cli

TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUv"


def test_the_engine_function_hides_tokens(monkeypatch):
    assert TOKEN not in error_text(RuntimeError(f"bad header Bearer {TOKEN}"))
    assert error_text(LoradeckError(f"no repo {TOKEN}", where="x")) == "x: no repo hf_***"
    monkeypatch.setenv("HF_TOKEN", "plain-secret-value")
    assert error_text("said plain-secret-value") == "said ***"
    assert error_text(ValueError("key sk-123456"), "sk-123456") == "ValueError: key ***"


def test_the_cli_line_hides_a_token():
    r = run_cli(["status", TOKEN], timeout=60)
    assert r.returncode != 0 and "hf_***" in r.stderr and TOKEN not in r.stderr + r.stdout


def test_a_screen_error_and_a_notification_hide_a_token(demo_model, tmp_path):
    from loradeck.engine import config as cfg
    from loradeck.tui.screens import changed_config

    missing = tmp_path / f"{TOKEN}.jsonl"

    async def main() -> None:
        app = LoradeckApp(draft=changed_config(cfg.Config(), {"dataset.path": str(missing)}))
        async with app.run_test(size=(100, 32)) as pilot:
            for _ in range(200):
                if getattr(app.screen, "ready", True):
                    break
                await pilot.pause(0.05)
            await pilot.press("d")
            errors = None
            for _ in range(200):
                errors = app.screen.query("#data-errors")
                if errors and str(errors.first(Static).content):
                    break
                await pilot.pause(0.05)
            shown = str(errors.first(Static).content)
            assert "dataset file not found" in shown and "hf_***" in shown, shown
            assert TOKEN not in shown
            app.notify_error(RuntimeError(f"the Hub said 401 for {TOKEN}"))
            await pilot.pause()
            texts = [str(n.message) for n in app._notifications]
            assert texts and all(TOKEN not in t for t in texts) and "hf_***" in texts[-1]

    asyncio.run(main())
