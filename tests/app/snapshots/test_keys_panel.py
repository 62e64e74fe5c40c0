"""Snapshots of the keys panel (F1), at 80x24 and larger (pytest-textual-snapshot)."""

from __future__ import annotations

import pytest

from loradeck.tui.app import LoradeckApp
from tests.helpers.app import (
    same_on_every_machine,  # noqa: F401  (an autouse fixture)
    wait_for,
)
from tests.helpers.snapshots import (
    SMALL,
    ready_after,
)


def panel_laid_out(*keys: str):
    """``ready_after(keys)``, then the keys table drawn for the keys active now: showing the
    panel turns on its pgup/pgdn (system keys, over the focused list's own), so the table
    warmed while hidden is drawn again a frame after F1, without the list's page keys."""
    async def ready(pilot) -> None:
        from loradeck.tui.widgets.keys_panel import KeysTable, QuietKeyPanel

        await ready_after(*keys)(pilot)
        table = pilot.app.screen.query_one(KeysTable)
        panel = pilot.app.screen.query_one(QuietKeyPanel)
        await wait_for(pilot, lambda: table._keys == table._current_keys()
                       and panel.virtual_size.height == len(table._strips(table.size.width)),
                       10, "the keys table for the keys active now")
        await pilot.pause(0.2)
    return ready


@pytest.mark.parametrize("keys", [("f1",)], ids=["keys-panel"])
def test_snapshot_keys_panel_80x24(snap_compare, demo_model, keys):
    assert snap_compare(LoradeckApp(demo=True), terminal_size=SMALL,
                        run_before=panel_laid_out(*keys))
