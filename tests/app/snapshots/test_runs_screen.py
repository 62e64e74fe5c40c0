"""Snapshots of the Runs screen, at 80x24 and larger (pytest-textual-snapshot)."""

from __future__ import annotations

from loradeck.tui.app import LoradeckApp
from tests.helpers.app import (
    same_on_every_machine,  # noqa: F401  (an autouse fixture)
    small_demo_config,
    training_events,
    wait_for,
    write_run,
)
from tests.helpers.snapshots import (
    SMALL,
    ready_after,
    runs_of_every_kind,
    snap_app,
)


def test_snapshot_runs(snap_compare, loradeck_home):
    runs_of_every_kind(loradeck_home)

    async def ready(pilot):
        await pilot.press("r")
        await wait_for(pilot, lambda: getattr(pilot.app.screen, "loaded", False), 10, "runs")
        await pilot.pause(0.3)

    assert snap_compare(snap_app(), terminal_size=(100, 24), run_before=ready)


def test_snapshot_runs_80x24(snap_compare, loradeck_home):
    write_run(loradeck_home, "demo-tiny-a-done", training_events(steps=12, max_steps=12),
              created=1)
    write_run(loradeck_home, "demo-tiny-b-stopped",
              training_events(steps=6, max_steps=12, end="stopped"), created=2)
    assert snap_compare(LoradeckApp(draft=small_demo_config()), terminal_size=SMALL,
                        run_before=ready_after("r", run_loaded=True))


def test_snapshot_runs_with_the_queue_80x24(snap_compare, loradeck_home):
    """A run done, one training on GPUs 0,1 from the queue, two waiting, one cancelled."""
    from loradeck.engine.queue import runner
    from loradeck.engine.queue.store import QueueStore

    write_run(loradeck_home, "demo-tiny-a-done", training_events(steps=12, max_steps=12),
              created=1)
    write_run(loradeck_home, "demo-tiny-b-gpus", training_events(steps=6, max_steps=12,
                                                                  end=None),
              created=2, alive=True, state={"gpus": ["0", "1"]})
    for n, name in enumerate(("demo-tiny-c-next", "demo-tiny-d-later", "demo-tiny-e-dropped")):
        write_run(loradeck_home, name, [], created=3 + n)
    store = QueueStore()
    store.set_flag(runner.STOPPED_FLAG, "1")
    store.add(["demo-tiny-b-gpus", "demo-tiny-c-next", "demo-tiny-d-later",
               "demo-tiny-e-dropped"])
    store.set_state("demo-tiny-b-gpus", "running", gpus=["0", "1"])
    store.cancel("demo-tiny-e-dropped")
    assert snap_compare(LoradeckApp(draft=small_demo_config()), terminal_size=SMALL,
                        run_before=ready_after("r", run_loaded=True))
