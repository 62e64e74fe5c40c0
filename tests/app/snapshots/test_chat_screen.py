"""Snapshots of the Chat screen, at 80x24 and larger (pytest-textual-snapshot)."""

from __future__ import annotations

from loradeck.engine.serve.replies import Finished
from loradeck.tui.app import LoradeckApp
from tests.helpers.app import (
    no_blink,
    same_on_every_machine,  # noqa: F401  (an autouse fixture)
    small_demo_config,
    training_events,
    write_run,
)
from tests.helpers.snapshots import (
    BASE_REPLY,
    FINISHED_RUN_ID,
    KOREAN_PROMPT,
    KOREAN_REPLY,
    SMALL,
    conversation,
    ready_after,
)

RUN = "demo-tiny-small"


def test_snapshot_chat_korean(snap_compare, loradeck_home):
    from loradeck.tui.app import LoradeckApp

    async def ready(pilot):
        await pilot.press("c")
        screen = pilot.app.screen
        await pilot.press("ctrl+b")
        for pane_id, reply_text, done in (
                ("#pane-base", BASE_REPLY, Finished("b", ttft_s=0.18, tokens_per_second=41.0,
                                                tokens=14)),
                ("#pane-tuned", KOREAN_REPLY, Finished("t", ttft_s=0.21, tokens_per_second=38.4,
                                                   tokens=57))):
            pane = screen.query_one(pane_id)
            await pane.add_user(KOREAN_PROMPT)
            reply = await pane.add_reply(reply_text)
            reply.finish(done)
        screen.query_one("#chat-loaded").update(f"run {FINISHED_RUN_ID} (demo:tiny + adapter) · cpu")
        await pilot.press("escape")
        no_blink(pilot.app)
        await pilot.pause(0.3)

    assert snap_compare(LoradeckApp(draft=small_demo_config()), terminal_size=(100, 30),
                        run_before=ready)


def test_snapshot_chat_80x24(snap_compare, loradeck_home):
    write_run(loradeck_home, RUN, training_events(steps=12, max_steps=12))

    async def ready(pilot) -> None:
        await pilot.press("c")
        await conversation(pilot.app.screen, 2)
        await pilot.press("escape")
        await ready_after()(pilot)
    assert snap_compare(LoradeckApp(run_id=RUN, draft=small_demo_config()),
                        terminal_size=SMALL, run_before=ready)
