"""Snapshots of the Train screen, at 80x24 and larger (pytest-textual-snapshot)."""

from __future__ import annotations

from tests.helpers.app import (
    same_on_every_machine,  # noqa: F401  (an autouse fixture)
    training_events,
    wait_for,
    write_run,
)
from tests.helpers.snapshots import (
    snap_app,
)


def test_snapshot_train(snap_compare, loradeck_home):
    write_run(loradeck_home, "demo-tiny-snapshot", training_events(steps=12, max_steps=12))

    async def ready(pilot):
        await wait_for(pilot, lambda: getattr(pilot.app.screen, "loaded", False), 10, "events")
        await pilot.pause(0.3)

    assert snap_compare(snap_app(run_id="demo-tiny-snapshot"), terminal_size=(100, 32),
                        run_before=ready)


def test_snapshot_train_80x24(snap_compare, loradeck_home):
    write_run(loradeck_home, "demo-tiny-snapshot", training_events(steps=7, max_steps=12,
                                                                   end="stopped"))

    async def ready(pilot):
        await wait_for(pilot, lambda: getattr(pilot.app.screen, "loaded", False), 10, "events")
        await pilot.pause(0.3)

    assert snap_compare(snap_app(run_id="demo-tiny-snapshot"), terminal_size=(80, 24),
                        run_before=ready)
