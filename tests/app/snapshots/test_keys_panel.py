"""Snapshots of the keys panel (F1), at 80x24 and larger (pytest-textual-snapshot)."""

from __future__ import annotations

import pytest

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


@pytest.mark.parametrize("keys", [("f1",)], ids=["keys-panel"])
def test_snapshot_keys_panel_80x24(snap_compare, demo_model, keys):
    assert snap_compare(LoradeckApp(demo=True), terminal_size=SMALL, run_before=ready_after(*keys))
