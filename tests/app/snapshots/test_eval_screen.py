"""Snapshots of the Eval screen, at 80x24 and larger (pytest-textual-snapshot): the choices,
the scores per model with the best of each column marked, and a row's answers side by side."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable

from loradeck.tui.app import LoradeckApp
from tests.helpers.app import (
    no_blink,
    same_on_every_machine,  # noqa: F401  (an autouse fixture)
    small_demo_config,
    wait_for,
)
from tests.helpers.snapshots import (  # noqa: F401  (fixtures)
    FINISHED_RUN_ID,
    finished_run,
    finished_run_dir,
    saved_eval,
)


def ready_on_eval(*keys: str):
    async def ready(pilot):
        await pilot.press("e")
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.result is not None
                       and screen.query_one("#eval-scores", DataTable).row_count == 4, 20,
                       "the scores")
        if keys:
            await pilot.press(*keys)
        no_blink(pilot.app)
        await pilot.pause(0.3)
    return ready


@pytest.mark.parametrize("size", [(80, 24), (110, 32)])
def test_snapshot_eval_scores(snap_compare, finished_run, size):
    saved_eval(finished_run.dir)
    assert snap_compare(LoradeckApp(run_id=FINISHED_RUN_ID, draft=small_demo_config()),
                        terminal_size=size, run_before=ready_on_eval())


@pytest.mark.parametrize("size", [(80, 24), (110, 32)])
def test_snapshot_eval_rows_side_by_side(snap_compare, finished_run, size):
    saved_eval(finished_run.dir)
    assert snap_compare(LoradeckApp(run_id=FINISHED_RUN_ID, draft=small_demo_config()),
                        terminal_size=size, run_before=ready_on_eval("v", "down"))
