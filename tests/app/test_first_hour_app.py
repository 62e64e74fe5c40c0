"""The app as a new user first meets it, by keys at 80x24: Compare shows every run, the keys
panel lists the screen's keys first and scrolls by keys, the palette keeps fast keys in order,
Chat has a key for the prompt and answers from a training run's base, the log wraps."""

from __future__ import annotations

import asyncio

import pytest
from textual import events
from textual.widgets import DataTable, Input

from tests.helpers.app import small_demo_config, training_events, wait_for, write_run
from tests.helpers.snapshots import two_runs

SMALL = (80, 24)


def _run(coro):
    return asyncio.run(coro)


def test_compare_at_80x24_shows_every_run_told_apart_by_their_ends(loradeck_home):
    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.screens.compare import CompareScreen

    two_runs(loradeck_home)

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=SMALL) as pilot:
            await pilot.press("r")
            await wait_for(pilot, lambda: app.screen.loaded, 20, "the runs")
            await pilot.press("space", "down", "space", "v")
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen)
                           and app.screen.data is not None, 20, "the comparison")
            await pilot.pause(0.3)
            screen = app.screen
            for table_id in ("#compare-diff", "#compare-figures"):
                table = screen.query_one(table_id, DataTable)
                labels = [str(c.label) for c in table.columns.values()][1:]
                assert labels == ["…a-r8", "…b-r16"]
                assert table.virtual_size.width <= table.size.width  # no run off screen
            legend = str(screen.query_one("#compare-legend").render())
            assert "…a-r8 train" in legend and "…b-r16 train" in legend
            chart = screen.query_one("#compare-chart")
            assert legend and chart.region.bottom <= screen.query_one("#compare-legend").region.y

    _run(main())


def test_keys_panel_lists_the_screen_keys_first_and_scrolls_by_keys(loradeck_home):
    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.widgets.keys_panel import KeysTable, QuietKeyPanel

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=SMALL) as pilot:
            await pilot.press("c")
            await pilot.pause(0.3)
            assert isinstance(app.screen.focused, Input)  # the prompt: an input's many keys
            await pilot.press("f1")
            await pilot.pause(0.3)
            table = app.screen.query_one(KeysTable)
            text = " ".join(" ".join(s.text.split()) for s in table._strips(table.size.width))
            assert text.index("Stop") < text.index("Quit") < text.index("Go to start")
            keys = app.screen.query_one(QuietKeyPanel)
            assert keys.max_scroll_y > 0 and keys.scroll_y == 0
            await pilot.press("pagedown")
            await pilot.pause(0.1)
            assert keys.scroll_y > 0
            await pilot.press("pageup")
            await pilot.pause(0.1)
            assert keys.scroll_y == 0
            await pilot.press("f1")  # hidden: pgdn is the focused widget's again
            assert app.check_action("scroll_keys", (1,)) is False

    _run(main())


def test_the_palette_keeps_keys_typed_in_one_burst(loradeck_home):
    from textual.command import CommandInput

    from loradeck.tui.app import LoradeckApp

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=SMALL) as pilot:
            await pilot.pause(0.3)
            await pilot.press("ctrl+p")
            await wait_for(pilot, lambda: app.screen.query(CommandInput), 5, "the palette")
            field = app.screen.query_one(CommandInput)
            for key, char in (("a", "a"), ("b", "b"), ("c", "c"), ("backspace", None),
                              ("backspace", None), ("x", "x")):
                app.post_message(events.Key(key, char))  # no pause between them
            await wait_for(pilot, lambda: field.value == "ax", 5, "the typed keys")
            assert field.value == "ax"

    _run(main())


def test_chat_keys_reach_the_prompt_and_name_the_base_key(loradeck_home):
    from loradeck.tui.app import LoradeckApp

    write_run(loradeck_home, "demo-tiny-training", training_events(steps=3, max_steps=12,
                                                                   end=None))

    async def main():
        app = LoradeckApp(run_id="demo-tiny-training", draft=small_demo_config())
        async with app.run_test(size=SMALL) as pilot:
            await pilot.press("c")
            await pilot.pause(0.3)
            screen = app.screen
            await pilot.press("ctrl+t")
            assert screen.focused.id == "chat-target"
            await pilot.press("ctrl+r")
            assert screen.focused.id == "chat-prompt"
            await pilot.press("ctrl+t", "enter")  # the model named: on to the prompt
            assert screen.focused.id == "chat-prompt"
            await wait_for(pilot, lambda: "ctrl+b" in str(
                screen.query_one("#chat-message").render()), 30, "the message")
            said = str(screen.query_one("#chat-message").render())
            assert "has no adapter yet" in said and "--base" in said

    _run(main())


@pytest.mark.slow
def test_a_training_runs_base_answers_in_the_base_pane(loradeck_home, demo_model, monkeypatch):
    from loradeck.tui.app import LoradeckApp

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    write_run(loradeck_home, "demo-tiny-training", training_events(steps=3, max_steps=12,
                                                                   end=None))

    async def main():
        app = LoradeckApp(run_id="demo-tiny-training", draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("c")
            await pilot.pause(0.3)
            screen = app.screen
            await pilot.press("ctrl+b")
            screen.query_one("#set-max_new_tokens", Input).value = "6"
            await pilot.press("ctrl+r", *"Hello", "enter")
            base = screen.query_one("#pane-base")
            await wait_for(pilot, lambda: base.replies() and base.replies()[-1].finished, 120,
                           "the base's reply")
            assert base.replies()[-1].done.adapter is False
            assert not screen.query_one("#pane-tuned").replies()
            said = str(screen.query_one("#chat-message").render())
            assert "the run has no adapter yet: its base answers" in said

    _run(main())


def test_the_train_log_wraps_long_lines(loradeck_home):
    from loradeck.tui.app import LoradeckApp

    long = ("the job ended without saying why (see: loradeck logs demo-tiny-wrap; continue "
            "with: loradeck resume demo-tiny-wrap)")
    events_ = training_events(steps=3, max_steps=12, end=None)
    events_.append({"t": events_[-1]["t"] + 1, "type": "log", "level": "warning",
                    "text": long})
    write_run(loradeck_home, "demo-tiny-wrap", events_)

    async def main():
        app = LoradeckApp(run_id="demo-tiny-wrap", draft=small_demo_config())
        async with app.run_test(size=SMALL) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: screen.loaded, 10, "the events")
            await pilot.pause(0.3)
            log = screen.query_one("#train-log")
            width = log.scrollable_content_region.width
            assert all(len(line) <= width for line in log.lines)
            joined = " ".join(line.strip() for line in log.lines[-4:])
            assert "continue with: loradeck resume demo-tiny-wrap)" in joined
            rows = len(log.lines)
            await pilot.resize_terminal(120, 30)
            await pilot.pause(0.3)
            assert len(log.lines) < rows  # wrapped again at the new width

    _run(main())


def test_the_train_screen_says_what_quantization_auto_chose(loradeck_home):
    from loradeck.tui.app import LoradeckApp

    events_ = training_events(steps=3, max_steps=12, end=None)
    info = next(e for e in events_ if e["type"] == "info")
    info.update(quantization="none", quantization_auto="no CUDA GPU, and 16-bit trains "
                "several times faster than 4-bit on a CPU")
    write_run(loradeck_home, "demo-tiny-auto", events_)

    async def main():
        app = LoradeckApp(run_id="demo-tiny-auto", draft=small_demo_config())
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: screen.loaded, 10, "the events")
            await pilot.pause(0.3)
            text = " ".join(line.strip() for line in screen.query_one("#train-log").lines)
            assert "quantization none (auto: no CUDA GPU" in text
            assert "adapter 65.54k parameters on a 532.35k base" in text  # counted apart

    _run(main())
