"""Snapshots of the Data screen, at 80x24 and larger (pytest-textual-snapshot)."""

from __future__ import annotations

import json
from pathlib import Path

from textual.widgets import Input

from loradeck.tui.app import LoradeckApp
from loradeck.tui.screens import changed_config
from tests.helpers.app import (
    same_on_every_machine,  # noqa: F401  (an autouse fixture)
    small_demo_config,
)
from tests.helpers.snapshots import (
    SIZE,
    SMALL,
    go,
    ready_after,
)


def test_snapshot_data_korean_rows(snap_compare, demo_model):
    assert snap_compare(LoradeckApp(demo=True), terminal_size=SIZE,
                        run_before=go("d", "down"))


def test_snapshot_data_80x24_with_row_errors(snap_compare, demo_model, tmp_path):
    bad = Path(tmp_path) / "bad.jsonl"
    bad.write_text("".join(json.dumps({"instruction": f"q{i}", "response": "" if i % 2 else "a"})
                           + "\n" for i in range(8)), encoding="utf-8")
    draft = changed_config(small_demo_config(), {"dataset.path": str(bad)})
    app = LoradeckApp(draft=draft)

    async def ready(pilot) -> None:
        await ready_after("d")(pilot)
        # the path differs on every machine: show its file name alone
        pilot.app.screen.query_one("#data-path", Input).value = "bad.jsonl"
        await pilot.pause(0.2)
    assert snap_compare(app, terminal_size=SMALL, run_before=ready)
