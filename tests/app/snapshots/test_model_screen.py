"""Snapshots of the Model screen, at 80x24 and larger (pytest-textual-snapshot)."""

from __future__ import annotations

from loradeck.tui.app import LoradeckApp
from tests.helpers.app import (
    same_on_every_machine,  # noqa: F401  (an autouse fixture)
)
from tests.helpers.snapshots import (
    SIZE,
    SMALL,
    go,
    ready_after,
)


def test_snapshot_model(snap_compare, demo_model):
    assert snap_compare(LoradeckApp(demo=True), terminal_size=SIZE, run_before=go())


def test_snapshot_model_80x24(snap_compare, demo_model):
    assert snap_compare(LoradeckApp(demo=True), terminal_size=SMALL, run_before=ready_after())
