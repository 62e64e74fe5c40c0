"""Snapshots of the Push screen, at 80x24 and larger (pytest-textual-snapshot)."""

from __future__ import annotations

from textual.widgets import Markdown

from loradeck.tui.app import LoradeckApp
from tests.helpers.app import (
    no_blink,
    same_on_every_machine,  # noqa: F401  (an autouse fixture)
    small_demo_config,
    training_events,
    wait_for,
    write_run,
)
from tests.helpers.snapshots import (  # noqa: F401  (fixtures)
    FINISHED_RUN_ID,
    SMALL,
    finished_run,
    finished_run_dir,
    ready_after,
)

RUN = "demo-tiny-small"


def test_snapshot_push(snap_compare, finished_run):
    async def ready(pilot):
        await pilot.press("p")
        screen = pilot.app.screen
        card = screen.query_one("#push-card", Markdown)
        await wait_for(pilot, lambda: "LoRA settings" in card.source, 20, "the card")
        no_blink(pilot.app)
        await pilot.pause(0.3)

    assert snap_compare(LoradeckApp(run_id=FINISHED_RUN_ID, draft=small_demo_config()),
                        terminal_size=(100, 30), run_before=ready)


def test_snapshot_push_80x24(snap_compare, loradeck_home):
    write_run(loradeck_home, RUN, training_events(steps=7, max_steps=12, end="stopped"))
    assert snap_compare(LoradeckApp(run_id=RUN, draft=small_demo_config()),
                        terminal_size=SMALL, run_before=ready_after("p"))
