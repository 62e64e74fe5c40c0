"""Snapshots of the keys panel (F1), at 80x24 and larger (pytest-textual-snapshot)."""

from __future__ import annotations

import pytest

from loradeck.tui.app import LoradeckApp
from tests.helpers.app import (
    same_on_every_machine,  # noqa: F401  (an autouse fixture)
    )
from tests.helpers.snapshots import (
    SMALL,
    ready_after,
)


@pytest.mark.parametrize("keys", [("f1",)], ids=["keys-panel"])
def test_snapshot_keys_panel_80x24(snap_compare, demo_model, keys):
    assert snap_compare(LoradeckApp(demo=True), terminal_size=SMALL, run_before=ready_after(*keys))
