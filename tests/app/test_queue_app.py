"""The queue in the app, by keys (Pilot): the Runs screen shows each run's place in the queue
and its GPUs, a adds the draft, [ and ] move a waiting run, delete cancels it; the Train
screen offers start now (s) or add to queue (a) and shows the GPUs a run was given. The queue
is stopped here, so nothing starts: the test is about the line, not the training."""

from __future__ import annotations

import asyncio

from textual.widgets import DataTable

from loradeck.engine.queue import runner
from loradeck.engine.queue.store import QueueStore
from loradeck.tui.app import LoradeckApp
from tests.helpers.app import (  # noqa: F401  (an autouse fixture)
    same_on_every_machine,
    screen_text,
    small_demo_config,
    training_events,
    wait_for,
    write_run,
)

SIZE = (120, 32)


def flat(app) -> str:
    """The screen's text with lines joined (a message may wrap)."""
    return " ".join(screen_text(app).split())


def cell(table: DataTable, run_id: str, column: str) -> str:
    return str(table.get_cell(run_id, column))


def test_the_runs_screen_queues_the_draft_moves_and_cancels_by_keys(loradeck_home, demo_model):
    write_run(loradeck_home, "demo-tiny-a-done", training_events(), created=1)
    store = QueueStore()
    store.set_flag(runner.STOPPED_FLAG, "1")  # hold the queue: nothing starts

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("r")
            screen = app.screen
            table = screen.query_one("#runs-table", DataTable)
            await wait_for(pilot, lambda: screen.loaded, 10, "the runs")
            assert screen.check_action("cancel", ()) is None  # a finished run is not waiting
            assert cell(table, "demo-tiny-a-done", "queue") == "-"
            for n in (1, 2):
                await pilot.press("a")
                await wait_for(pilot, lambda n=n: len(store.entries()) == n, 60, "an entry")
                await wait_for(pilot, lambda n=n: table.row_count == 1 + n, 10, "its row")
            first, second = (e.run_id for e in store.entries())
            assert "the queue is stopped" in flat(app)
            assert cell(table, first, "queue") == "#1 waiting"
            assert cell(table, second, "queue") == "#2 waiting"

            table.move_cursor(row=table.get_row_index(first))
            await pilot.pause()
            assert screen.check_action("move", (-1,)) is None  # already next
            await pilot.press("right_square_bracket")
            await wait_for(pilot, lambda: cell(table, first, "queue") == "#2 waiting", 10,
                           "the move down")
            assert cell(table, second, "queue") == "#1 waiting"
            assert [e.run_id for e in store.entries() if e.state == "queued"] == [second, first]
            await pilot.press("left_square_bracket")
            await wait_for(pilot, lambda: cell(table, first, "queue") == "#1 waiting", 10,
                           "the move up")

            await pilot.press("delete")
            await wait_for(pilot, lambda: cell(table, first, "queue") == "cancelled", 10,
                           "the cancel")
            assert cell(table, second, "queue") == "#1 waiting"
            assert "taken out of the queue" in flat(app)
            assert screen.check_action("cancel", ()) is None

    asyncio.run(main())
    assert [(e.run_id.startswith("demo-tiny"), e.state) for e in store.entries()] == [
        (True, "cancelled"), (True, "queued")]


def test_the_train_screen_starts_now_or_adds_to_the_queue(loradeck_home, demo_model):
    store = QueueStore()
    store.set_flag(runner.STOPPED_FLAG, "1")

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("t")
            screen = app.screen
            assert screen.check_action("start", ()) and screen.check_action("queue", ())
            assert "or a to add it to the queue" in flat(app)
            await pilot.press("a")
            await wait_for(pilot, lambda: "r shows the queue" in flat(app), 60,
                           "the draft queued")
            entry = store.entries()[0]
            assert f"queued {entry.run_id} (#1 in the queue)" in flat(app)
            assert app.current_run_id is None  # queued, not started: nothing to follow yet

    asyncio.run(main())


def test_a_runs_gpus_show_on_the_runs_screen_the_title_and_the_system_panel(loradeck_home):
    write_run(loradeck_home, "demo-tiny-on-gpus", training_events(end=None), created=1,
              state={"gpus": ["2", "3"]})
    write_run(loradeck_home, "demo-tiny-no-gpus", training_events(), created=2)

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("r")
            screen = app.screen
            await wait_for(pilot, lambda: screen.loaded, 10, "the runs")
            table = screen.query_one("#runs-table", DataTable)
            assert cell(table, "demo-tiny-on-gpus", "gpus") == "2,3"
            assert cell(table, "demo-tiny-no-gpus", "gpus") == "-"
            app.open_run("demo-tiny-on-gpus")
            await wait_for(pilot, lambda: getattr(app.screen, "drawn", False)
                           and app.screen.gpus == ["2", "3"], 10, "the run")
            await wait_for(pilot, lambda: "GPUs 2,3 · " in screen_text(app), 10, "the panel")
            assert "Run demo-tiny-on-gpus · demo:tiny on demo · GPUs 2,3" in screen_text(app)

    asyncio.run(main())
