"""Snapshots of the LoRA screen, at 80x24 and larger (pytest-textual-snapshot)."""

from __future__ import annotations

from loradeck.tui.app import LoradeckApp
from tests.helpers.app import (
    same_on_every_machine,  # noqa: F401  (an autouse fixture)
    )
from tests.helpers.snapshots import (
    SIZE,
    go,
)


def test_snapshot_lora(snap_compare, demo_model):
    assert snap_compare(LoradeckApp(demo=True), terminal_size=SIZE, run_before=go("l"))


def test_snapshot_lora_80x24_with_an_error(snap_compare, demo_model):
    assert snap_compare(LoradeckApp(demo=True), terminal_size=(80, 24),
                        run_before=go("l", "tab", "tab", "tab", "home", "ctrl+k", "0", "escape"))
