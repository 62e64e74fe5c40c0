"""Snapshots of the LoRA screen, at 80x24 and larger (pytest-textual-snapshot)."""

from __future__ import annotations

from loradeck.tui.app import LoradeckApp
from tests.helpers.app import (  # noqa: F401  (an autouse fixture)
    no_blink,
    same_on_every_machine,
    small_demo_config,
    training_events,
    wait_for,
    write_run,
)
from tests.helpers.snapshots import (  # noqa: F401  (fixtures)
    BASE_REPLY,
    FINISHED_RUN_ID,
    KOREAN_PROMPT,
    KOREAN_REPLY,
    SIZE,
    SMALL,
    conversation,
    finished_run,
    finished_run_dir,
    go,
    ready_after,
    runs_of_every_kind,
    snap_app,
    two_runs,
)

RUN = "demo-tiny-small"


def test_snapshot_lora(snap_compare, demo_model):
    assert snap_compare(LoradeckApp(demo=True), terminal_size=SIZE, run_before=go("l"))


def test_snapshot_lora_80x24_with_an_error(snap_compare, demo_model):
    assert snap_compare(LoradeckApp(demo=True), terminal_size=(80, 24),
                        run_before=go("l", "tab", "tab", "tab", "home", "ctrl+k", "0", "escape"))
