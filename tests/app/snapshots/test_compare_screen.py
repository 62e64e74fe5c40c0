"""Snapshots of the Compare screen, at 80x24 and larger (pytest-textual-snapshot)."""

from __future__ import annotations

import pytest

from loradeck.tui.app import LoradeckApp
from tests.helpers.app import (
    same_on_every_machine,  # noqa: F401  (an autouse fixture)
    small_demo_config,
    wait_for,
)
from tests.helpers.snapshots import (
    two_runs,
)


@pytest.mark.parametrize("size", [(80, 24), (100, 32)])
def test_snapshot_compare(snap_compare, loradeck_home, size):
    from loradeck.tui.screens.compare import CompareScreen

    two_runs(loradeck_home)

    async def ready(pilot):
        await pilot.press("r")
        await wait_for(pilot, lambda: getattr(pilot.app.screen, "loaded", False), 20, "runs")
        await pilot.press("space", "down", "space", "v")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, CompareScreen)
                       and pilot.app.screen.data is not None, 20, "the comparison")
        await pilot.pause(0.3)

    assert snap_compare(LoradeckApp(draft=small_demo_config()), terminal_size=size,
                        run_before=ready)
