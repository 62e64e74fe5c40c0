"""The whole flow by keys on the demo, as a user on a fresh machine would do it: pick the model,
look at the data, choose the quick CPU preset, train (stopping and resuming on the way) until
the run is done, chat with the result, and push its adapter to the tests' local Hub server."""

from __future__ import annotations

import asyncio

import pytest
from textual.widgets import DataTable, Input, Log, Sparkline, Switch

from loradeck.engine.runs.events import read_events
from loradeck.tui.run_view import RunView
from tests.helpers.app import screen_text, wait_for
from tests.helpers.hub_server import TOKEN, serve


async def _set_field(pilot, field_id: str, value: str) -> None:
    """Tab to an input, clear it and type ``value``."""
    app = pilot.app
    for _ in range(25):
        if app.screen.focused is not None and app.screen.focused.id == field_id:
            break
        await pilot.press("tab")
    assert app.screen.focused.id == field_id, f"could not reach #{field_id} with tab"
    await pilot.press("home", "ctrl+k", *value)


@pytest.mark.slow
def test_demo_flow_by_keys(demo_model, tmp_path, monkeypatch):
    from loradeck.tui.app import LoradeckApp

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # the job waits at step 6 until a stop is asked for: the stop lands mid-run on any machine
    monkeypatch.setenv("LORADECK_INJECT_HOLD_AT_STEP", "6")

    async def main(hub):
        app = LoradeckApp(demo=True)
        async with app.run_test(size=(100, 32)) as pilot:
            # Model: the demo model is highlighted; enter uses it
            assert app.current_mode == "model"
            await pilot.press("enter")
            assert app.draft.model.name == "demo:tiny"

            # Data: the demo rows load into the table
            await pilot.press("d")
            rows = app.screen.query_one("#data-rows", DataTable)
            await wait_for(pilot, lambda: rows.row_count > 0, 60, "the demo rows")

            # LoRA: the quick CPU preset, then a shorter run
            await pilot.press("l")
            await pilot.press("enter")  # open the preset list
            await pilot.pause(0.2)
            await pilot.press("down", "enter")
            await wait_for(pilot, lambda: app.draft.training.learning_rate == 1e-3, 10,
                           "the preset")
            await _set_field(pilot, "f-training-max_steps", "40")
            await _set_field(pilot, "f-training-logging_steps", "1")
            await _set_field(pilot, "f-training-save_steps", "4")
            await wait_for(pilot, lambda: app.draft.training.save_steps == 4, 5, "the draft")
            assert app.draft.training.max_steps == 40
            await pilot.press("escape")  # leave the field so letters switch screens

            # Train: s starts; the loss reaches the table, the sparkline and the log
            await pilot.press("t")
            train = app.screen
            assert train.check_action("stop", ()) is None
            assert train.check_action("resume", ()) is None
            await pilot.press("s")
            await wait_for(pilot, lambda: train.view is not None and train.view.train_losses,
                           240, "the first train loss")
            table = train.query_one("#loss-table", DataTable)
            await wait_for(pilot, lambda: table.row_count >= 1, 10, "a loss row")
            # the Train screen draws a poll one widget per frame: let it finish
            await wait_for(pilot, lambda: train.drawn, 10, "the poll drawn")
            step = min(train.view.train_losses)
            assert table.get_cell(str(step), "loss") == f"{train.view.train_losses[step]:.4f}"
            assert list(train.query_one("#train-spark", Sparkline).data)
            assert any(" loss " in line for line in train.query_one(Log).lines)
            run_id = app.current_run_id

            # x stops it gracefully at a checkpoint; u resumes it from there
            assert train.check_action("stop", ()) is True
            assert train.check_action("start", ()) is None
            await pilot.press("x")
            await wait_for(pilot, lambda: train.view.phase == "stopped" and not train.alive,
                           120, "the run to stop")
            stopped_at = train.view.step
            assert 0 < stopped_at < 40 and train.view.checkpoints[-1] == stopped_at
            assert train.check_action("resume", ()) is True
            assert train.check_action("stop", ()) is None
            await pilot.press("u")
            await wait_for(pilot, lambda: train.view.phase == "done" and not train.alive,
                           240, "the resumed run to finish")
            assert sorted(train.view.train_losses) == list(range(1, 41))
            await wait_for(pilot, lambda: table.row_count == 40, 5, "forty loss rows")
            assert train.check_action("resume", ()) is None
            fresh = RunView()
            fresh.feed(read_events(train.run_obj.events_path))
            assert fresh.train_series() == train.view.train_series()
            # the view folds the events in its poll thread; the screen draws them frames later
            await wait_for(pilot, lambda: "done" in screen_text(app), 10, "the screen to show done")

            # Chat: the run's adapter answers, streamed, with time to first token
            await pilot.press("c")
            chat = app.screen
            assert chat.query_one("#chat-target", Input).value == run_id
            await _set_field(pilot, "set-max_new_tokens", "10")
            await _set_field(pilot, "chat-prompt", "한국의 수도는 어디인가요?")
            await pilot.press("enter")
            tuned = chat.query_one("#pane-tuned")
            await wait_for(pilot, lambda: tuned.replies() and tuned.replies()[-1].finished,
                           180, "the reply")
            reply = tuned.replies()[-1]
            assert reply.done is not None and reply.done.adapter is True
            assert reply.text and reply.stats.startswith("ttft ")
            await pilot.press("escape")

            # Push: the adapter (the merge is covered in test_app_chat_push), private by
            # default, to the local Hub
            await pilot.press("p")
            push = app.screen
            await wait_for(pilot, lambda: push.check_action("push", ()) is True, 30,
                           "push to apply")
            for _ in range(10):
                if isinstance(push.focused, Switch) and push.focused.id == "push-adapter":
                    break
                await pilot.press("tab")
            await pilot.press("space")
            assert push.query_one("#push-adapter", Switch).value is True
            assert push.query_one("#push-public", Switch).value is False
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: push.repo_url, 300, "the repo's address")
            url = f"{hub.url}/tester/{run_id}"
            assert push.repo_url == url
            await pilot.pause(0.3)
            text = screen_text(app)
            assert f"pushed to {url}" in text and TOKEN not in text
            assert hub.repos[f"tester/{run_id}"].private is True
            files = hub.files(f"tester/{run_id}")
            assert "adapter_model.safetensors" in files and "README.md" in files

    with serve(tmp_path / "hub") as hub:
        for key, value in (("HF_ENDPOINT", hub.url), ("HF_TOKEN", TOKEN),
                           ("HF_HUB_DISABLE_XET", "1"), ("HF_HUB_OFFLINE", "0"),
                           ("LORADECK_PUSH_BACKOFF", "0.05")):
            monkeypatch.setenv(key, value)
        asyncio.run(main(hub))
