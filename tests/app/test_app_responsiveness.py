"""The app stays responsive: its first frame waits for no config/pydantic/yaml; hidden screens
do no drawing work for what they receive, are laid out off the terminal at idle moments, and are
shown again with one whole frame at once; screen keys and F1 are handled as they reach the app;
typing lays nothing out; the Train screen draws one widget per frame and its loss table at most
once a second; the keys panel lies over the screen, is not rebuilt while hidden and has its
table rendered before the first F1; streamed replies are coalesced and kept cheap to lay out,
wait for the frame of a key typed into the prompt and hold no frame back; the app draws up to
120 frames a second."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap

from textual.widgets import Log

from loradeck.engine.runs.events import EventWriter
from loradeck.tui import textual_compat as compat
from tests.conftest import ROOT
from tests.helpers.app import (
    app_env,
    small_demo_config,
    training_events,
    wait_for,
    write_run,
)

FIRST_FRAME_SCRIPT = textwrap.dedent("""
    import json, sys
    from loradeck.tui.app import LoradeckApp

    LOADED = ("loradeck.engine.config", "pydantic", "yaml", "textual.widgets._text_area")
    seen = {}

    class Watched(LoradeckApp):
        def _display(self, screen, renderable):
            first = not self._first_frame_shown
            super()._display(screen, renderable)
            if first and self._first_frame_shown:
                seen["first_frame"] = sorted(m for m in LOADED if m in sys.modules)

    async def settle(pilot):
        app = pilot.app
        for _ in range(100):
            await pilot.pause(0.1)
            label = app.screen.query("#model-current")
            if label and "demo:tiny" in str(label.first().render()):
                break
        seen["settled"] = str(app.screen.query_one("#model-current").render())
        seen["after"] = sorted(m for m in LOADED[:2] if m in sys.modules)
        app.exit()

    Watched(demo=True).run(headless=True, size=(100, 32), auto_pilot=settle)
    print(json.dumps(seen))
""")


def test_first_frame_waits_for_no_config_pydantic_or_yaml(tmp_path):
    """The first frame is drawn before loradeck.engine.config (pydantic, yaml) is imported; the draft
    is read right after it, and the settled screen shows it."""
    out = subprocess.run([sys.executable, "-c", FIRST_FRAME_SCRIPT],
                         env=app_env(tmp_path / "home"), capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["first_frame"] == [], f"imported before the first frame: {seen['first_frame']}"
    assert "Base model: demo:tiny" in seen["settled"]
    assert seen["after"] == ["loradeck.engine.config", "pydantic"]


def test_loradeck_draws_up_to_120_frames_a_second_unless_told_otherwise(tmp_path):
    """``loradeck`` sets Textual's frame cap to 120 (the frame that shows a key waits for the
    next tick after a long frame); a TEXTUAL_FPS the user set is kept."""
    code = "import loradeck.tui.cli, textual.constants as c; print(c.MAX_FPS)"
    for env_fps, expected in ((None, "120"), ("30", "30")):
        env = app_env(tmp_path)
        env.pop("TEXTUAL_FPS", None)
        if env_fps:
            env["TEXTUAL_FPS"] = env_fps
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=60)
        assert out.stdout.strip() == expected, out.stderr[-2000:]


def _live_run(home, run_id: str, max_steps: int = 50):
    """A run three steps in, its job alive (this process)."""
    return write_run(home, run_id, training_events(steps=3, max_steps=max_steps, end=None),
                     alive=True)


def test_hidden_train_screen_draws_nothing_until_shown(loradeck_home):
    """While another screen is shown, the Train screen keeps polling its run but writes none
    of the new lines; shown again, it draws them all at once."""
    from loradeck.tui.app import LoradeckApp

    run = _live_run(loradeck_home, "demo-tiny-live")

    async def main():
        app = LoradeckApp(run_id=run.id, draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            train = app.screen
            log = train.query_one("#train-log", Log)
            await wait_for(pilot, lambda: train.drawn, 10, "the run's events")
            drawn = len(log.lines)
            app.action_go("chat")
            await pilot.pause(0.1)
            writer = EventWriter(run.events_path)
            for i in range(300):
                writer.log(f"hidden line {i}")
            await wait_for(pilot, lambda: train.pending and len(train.pending.lines) == 300, 10,
                           "a poll while hidden")
            assert len(log.lines) == drawn  # nothing drawn while hidden
            frames = _frames(app)
            app.action_go("train")
            # the switch draws the screen as it was; the backlog comes in the frames after
            assert frames and frames[0] == ("LayoutUpdate", drawn)
            await wait_for(pilot, lambda: len(log.lines) == drawn + 300, 5, "the catch-up")
            assert train.pending is None
            assert log.lines[-1].endswith("hidden line 299")

    asyncio.run(main())


async def _show(pilot, mode: str):
    """Switch to the screen ``mode`` and let it settle (its hidden keys panel mounted, which
    lays the screen out once more); the screen."""
    from loradeck.tui.widgets.keys_panel import KeysTable

    pilot.app.action_go(mode)
    screen = pilot.app.screen
    await wait_for(pilot, lambda: screen.query(KeysTable) and screen.query_one(KeysTable)._lines,
                   5, "the screen's keys panel")
    await pilot.pause(0.1)
    return screen


def _reflows(screen) -> list[tuple]:
    """From now on, each layout of ``screen`` (the arguments of its compositor's reflow)."""
    reflows: list[tuple] = []
    reflow = screen._compositor.reflow
    screen._compositor.reflow = lambda *a: reflows.append(a) or reflow(*a)
    return reflows


def _frames(app) -> list[tuple[str, int]]:
    """From now on, each frame the app draws: its kind (LayoutUpdate: the whole screen) and
    the number of lines in the Train log then."""
    frames: list[tuple[str, int]] = []
    display = app._display

    def watched(screen, renderable) -> None:
        display(screen, renderable)
        if renderable is not None and not app._batch_count:
            logs = screen.query("#train-log")
            frames.append((type(renderable).__name__, len(logs.first().lines) if logs else 0))

    app._display = watched
    return frames


def test_screen_switch_draws_one_whole_frame(loradeck_home):
    """A switch draws the screen it shows as one frame of the whole screen, at once (never
    parts of it over the screen it replaces), and once: no second whole repaint follows."""
    from loradeck.tui.app import LoradeckApp

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            for mode in ("chat", "train", "chat", "model"):
                app.action_go(mode)
                await pilot.pause(0.5)
            frames = _frames(app)
            for mode in ("train", "chat", "model"):
                frames.clear()
                app.action_go(mode)
                assert [kind for kind, _ in frames] == ["LayoutUpdate"], mode  # drawn at once
                await pilot.pause(0.5)
                assert [kind for kind, _ in frames].count("LayoutUpdate") == 1, (mode, frames)

    asyncio.run(main())


def test_hidden_screen_is_laid_out_at_idle_and_shown_without_a_layout(loradeck_home):
    """What changed on a screen just after it was hidden (here a reply's new text) is laid out
    and drawn off the terminal once the app is idle: showing the screen again lays out
    nothing at the key."""
    from loradeck.tui.app import PREPARE_AFTER, LoradeckApp
    from loradeck.tui.widgets.chat_log import ChatPane

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            chat = await _show(pilot, "chat")
            pane = chat.query_one("#pane-tuned", ChatPane)
            app.action_go("train")
            # a reply's words land just after the screen was hidden (a stream's last update)
            reply = await pane.add_reply("")
            await reply.markdown.append("Some words.\n\n- a list item\n- another one\n")
            await wait_for(pilot, lambda: not compat.layout_stale(chat, app.size),
                           PREPARE_AFTER * 100, "the hidden screen laid out")
            reflows = _reflows(chat)
            app.action_go("chat")
            assert reflows == []
            assert reply.size.height >= 3  # the new words were laid out while hidden

    asyncio.run(main())


def test_screen_and_f1_keys_are_handled_as_they_reach_the_app(loradeck_home):
    """A screen key (or F1) is handled as soon as it reaches the app, not after a trip through
    the focused widget and back; in a focused input the same letter is typed."""
    from textual.widgets import Input

    from loradeck.tui.app import LoradeckApp, keys_panel_shown
    from loradeck.tui.widgets.keys_panel import KeysPanel

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            app.action_go("chat")
            await wait_for(pilot, lambda: app.screen.query(KeysPanel), 5, "the keys panel")
            app.screen.set_focus(None)
            await pilot.pause(0.1)
            await _a_key_comes(app, "t")
            assert app.current_mode == "train"  # no pause: handled in the app's own step
            await pilot.pause(0.3)
            await wait_for(pilot, lambda: app.screen.query(KeysPanel), 5, "the keys panel")
            await _a_key_comes(app, "f1")
            assert keys_panel_shown(app.screen)
            await _a_key_comes(app, "f1")
            await _a_key_comes(app, "c")
            assert app.current_mode == "chat"
            prompt = app.screen.query_one("#chat-prompt", Input)
            prompt.focus()
            await pilot.pause(0.1)
            await pilot.press("t")
            assert app.current_mode == "chat" and prompt.value.endswith("t")

    asyncio.run(main())


def test_help_line_follows_the_focus_without_a_layout(loradeck_home):
    """The help line under the Chat screen shows the focused field's tooltip; changing it
    lays nothing out (one line, its size fixed), and the same text is not set again."""
    from textual.widgets import Input

    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.widgets.help_line import HelpLine

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            app.action_go("chat")
            await pilot.pause(0.3)
            help_line = app.screen.query_one(HelpLine)
            field = next(w for w in app.screen.query(Input) if w.tooltip)
            field.focus()
            await pilot.pause()
            assert str(help_line.render()) == field.tooltip
            help_line._focus_changed(None)
            assert str(help_line.render()) == help_line.default
            assert not help_line._layout_required
            updates = []
            help_line.update = lambda *a, **k: updates.append(a)
            help_line._focus_changed(None)
            assert updates == []

    asyncio.run(main())


def test_typing_into_a_field_lays_nothing_out(loradeck_home):
    """A typed letter draws the field again and lays out nothing (Textual's Input lays out
    the whole screen at every key); a text longer than the field still scrolls along."""
    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.widgets.line_input import LineInput

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=(60, 32)) as pilot:
            chat = await _show(pilot, "chat")
            prompt = chat.query_one("#chat-prompt", LineInput)
            prompt.focus()
            await pilot.pause(0.2)
            reflows = _reflows(chat)
            text = "abcdefghij" * 6 + "XYZ"
            await pilot.press(*text)
            await pilot.pause(0.2)
            assert prompt.value == text and reflows == []
            assert prompt.scroll_x > 0  # the end of the text is in view
            line = chat._compositor.render_strips(app.size)[prompt.region.y + 1].text
            assert line.rstrip(" ▎").endswith("XYZ")

    asyncio.run(main())


def test_hidden_keys_panel_is_not_rebuilt_when_bindings_change(loradeck_home):
    """The hidden keys panel keeps its one keys table while the screen's bindings change
    (Textual's panel mounts a new table each time, and the screen is laid out again); F1
    shows it with the keys of the moment."""
    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.widgets.keys_panel import KeysPanel, KeysTable, QuietKeyPanel

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            app.action_go("chat")
            chat = app.screen
            await wait_for(pilot, lambda: chat.query(KeysPanel), 5, "the hidden keys panel")
            table = chat.query_one(KeysTable)
            for _ in range(3):
                chat.generating = not chat.generating  # Stop becomes (un)available
                chat.refresh_bindings()
                await pilot.pause(0.2)
            assert chat.query_one(KeysTable) is table and chat.query_one(QuietKeyPanel).stale
            assert not chat._layout_required
            await pilot.press("escape", "f1")
            await wait_for(pilot, lambda: chat.query_one(KeysPanel).shown, 5, "the panel")
            await pilot.pause(0.2)
            assert chat.query_one(KeysTable) is table
            assert not chat.query_one(QuietKeyPanel).stale
            drawn = "\n".join(strip.text for strip in chat._compositor.render_strips(app.size))
            assert "Stop" in drawn

    asyncio.run(main())


def test_train_updates_come_one_widget_per_frame_and_the_table_at_most_every_second(
        loradeck_home):
    """A poll's new log lines and the loss chart are drawn in separate frames (no frame
    holds a key up for both), and the loss table, whose every visible cell is drawn again on
    each change, takes new rows at most every TABLE_EVERY seconds."""
    import time

    from textual.widgets import DataTable, Sparkline

    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.screens.train import TABLE_EVERY

    run = _live_run(loradeck_home, "demo-tiny-busy", max_steps=500)

    async def main():
        app = LoradeckApp(run_id=run.id, draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            train = app.screen
            await wait_for(pilot, lambda: train.drawn, 10, "the run's events")
            log, table = train.query_one("#train-log", Log), train.query_one(DataTable)
            spark = train.query_one("#train-spark", Sparkline)
            seen: list[tuple[float, int, int, int]] = []
            display = app._display

            def watched(screen, renderable) -> None:
                display(screen, renderable)
                if renderable is not None and not app._batch_count:
                    seen.append((time.monotonic(), len(log.lines), len(spark.data or []),
                                 table.row_count))

            app._display = watched
            table_drawn: list[float] = []
            add_row = table.add_row
            table.add_row = lambda *a, **k: table_drawn.append(time.monotonic()) or add_row(*a,
                                                                                           **k)
            writer = EventWriter(run.events_path)
            for step in range(4, 40):
                writer.log(f"step {step}")
                writer.emit("metrics", step=step, max_steps=500, loss=5.0 - step / 100)
                await pilot.pause(0.1)
            await wait_for(pilot, lambda: table.row_count == 39 and train.drawn, 10,
                           "the last rows")
            for before, after in zip(seen, seen[1:], strict=False):
                assert not (after[1] != before[1] and after[2] != before[2]), (before, after)
            # rows come in batches, a batch at most every TABLE_EVERY seconds
            batches = [t for i, t in enumerate(table_drawn) if i == 0 or t - table_drawn[i - 1]
                       > 0.05]
            assert len(batches) >= 2 and len(table_drawn) == 36
            gaps = [b - a for a, b in zip(batches, batches[1:], strict=False)]
            assert min(gaps) >= TABLE_EVERY * 0.95, gaps

    asyncio.run(main())


def test_first_f1_draws_the_keys_table_rendered_while_hidden(loradeck_home):
    """The hidden keys panel renders its keys table at idle time, at the widths it will
    have on the screen: the first F1 renders no table."""
    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.widgets.keys_panel import KeysPanel, KeysTable

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            app.action_go("train")
            train = app.screen
            await wait_for(pilot, lambda: app.draft_read, 10, "the start's work")

            def warmed() -> bool:  # for the keys of the widget focused now
                tables = train.query(KeysTable)
                if not tables:
                    return False
                table = tables.first()
                return any(keys == table._current_keys() for keys, _w in table._lines)

            await wait_for(pilot, warmed, 10, "the warmed keys table")
            table = train.query_one(KeysTable)
            rendered, keys = set(table._lines), table._current_keys()
            await pilot.press("f1")
            panel = train.query_one(KeysPanel)
            await wait_for(pilot, lambda: panel.shown and table.size.width > 0, 5, "the panel")
            # the table F1 shows (the keys at the press, the panel's width) was rendered
            # before it; later key changes (the screen's own work) may render more
            assert (keys, table.size.width) in rendered

    asyncio.run(main())


def test_train_log_stays_bounded(loradeck_home):
    """A run that logs more lines than the live log keeps shows the newest LOG_LINES only."""
    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.screens.train import LOG_LINES

    events = training_events(steps=3, max_steps=50, end=None)
    events += [{"t": events[-1]["t"] + 1, "type": "log", "text": f"line {i}"}
               for i in range(LOG_LINES + 700)]
    run = write_run(loradeck_home, "demo-tiny-chatty", events, alive=True)

    async def main():
        app = LoradeckApp(run_id=run.id, draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            train = app.screen
            await wait_for(pilot, lambda: train.drawn, 10, "the run's events")
            writer = EventWriter(run.events_path)
            for i in range(500):
                writer.log(f"more {i}")
            log = train.query_one("#train-log", Log)
            await wait_for(pilot, lambda: log.lines and log.lines[-1].endswith("more 499"), 10,
                           "the new lines")
            assert len(log.lines) == LOG_LINES
            assert len(train.view.log) == LOG_LINES

    asyncio.run(main())


def _paragraphs(n: int) -> str:
    return "".join(f"Paragraph {i}: the adapter learns a small update; 어댑터만 바꿉니다.\n\n"
                   for i in range(n))


async def new_reply(app, pilot):
    """On the Chat screen, a new reply in the tuned pane and its stream."""
    from loradeck.tui.widgets.chat_log import ChatPane

    await _show(pilot, "chat")  # settled: its footer and keys panel built
    reply = await app.screen.query_one("#pane-tuned", ChatPane).add_reply()
    return reply, reply.stream()


def test_reply_stream_coalesces_and_waits_while_hidden(loradeck_home):
    """Fragments are drawn a few times a second, not one update each; while the Chat screen
    is hidden nothing is drawn; shown again, the reply catches up in one update."""
    from loradeck.tui.app import LoradeckApp

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            reply, stream = await new_reply(app, pilot)
            for i in range(100):
                await stream.write(f"word{i} ")
            await wait_for(pilot, lambda: not stream.pending, 3, "the first updates")
            assert 1 <= stream.updates <= 3  # 100 fragments, at most a few updates
            shown = reply.source
            app.action_go("train")
            await pilot.pause(0.1)
            for i in range(100, 200):
                await stream.write(f"word{i} ")
            await pilot.pause(0.8)
            assert reply.source == shown  # nothing drawn while hidden
            updates = stream.updates
            app.action_go("chat")
            await wait_for(pilot, lambda: not stream.pending, 3, "the catch-up")
            assert stream.updates == updates + 1
            await stream.stop()
            assert reply.source == "".join(f"word{i} " for i in range(200))

    asyncio.run(main())


def test_long_reply_is_chunked_and_finished_chunks_are_one_widget(loradeck_home):
    """A long streamed reply is cut into Markdown chunks; the finished ones become one widget
    together, drawing the lines one Markdown of their text draws, so the screen's widget
    count stays small."""
    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.widgets.chat_log import FrozenMarkdown

    text = _paragraphs(60)

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            reply, stream = await new_reply(app, pilot)
            for piece in re.findall(r"\S+\s*", text):
                await stream.write(piece)
                stream._wake.set()
                await asyncio.sleep(0)
            await stream.stop()
            await wait_for(pilot, lambda: len(reply.chunks()) == 2
                           and isinstance(reply.chunks()[0], FrozenMarkdown), 5, "frozen chunks")
            chunks = reply.chunks()
            assert chunks[0].source.count("\n\n") >= 5  # several finished chunks, merged
            assert reply.source == text
            assert len(list(reply.walk_children())) < 40  # a Markdown would hold 60+ blocks
            # the finished chunks draw what their Markdown drew: their paragraphs with a blank
            # line after each; thawed (one Markdown of all their text, drawn anew) and frozen
            # again, the same lines
            frozen = chunks[0]
            lines = [strip.text for strip in frozen._strips]
            paragraphs = [line.strip() for line in lines if line.strip()]
            assert paragraphs == [p for p in frozen.source.split("\n") if p][:len(paragraphs)]
            assert paragraphs and lines[1].strip() == "" and len(lines) == 2 * len(paragraphs)
            frozen.thaw()
            await wait_for(pilot, lambda: isinstance(reply.chunks()[0], FrozenMarkdown)
                           and reply.chunks()[0] is not frozen, 5, "frozen again")
            assert [strip.text for strip in reply.chunks()[0]._strips] == lines
            assert reply.source == text

    asyncio.run(main())


def test_screen_switch_draws_at_once_and_footer_greys_keys_in_place(loradeck_home):
    """Switching screens holds no drawing back (Textual's 50 ms delay_update), and a key
    becoming available greys in within the same footer keys (no rebuild)."""
    from textual.widgets._footer import FooterKey

    from loradeck.tui.app import LoradeckApp

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            batches = app._batch_count
            app.action_go("chat")
            assert app._batch_count == batches  # drawn at once, no delay_update batch
            await pilot.pause(0.3)
            chat = app.screen
            await pilot.press("escape")  # leave the prompt: every key of the screen shows
            await pilot.pause(0.3)
            keys = list(chat.query(FooterKey))
            stop = next(k for k in keys if k.action == "stop")
            assert stop.has_class("-disabled")
            chat.generating = True
            await pilot.pause(0.2)
            assert list(chat.query(FooterKey)) == keys  # the same widgets
            assert not stop.has_class("-disabled")
            chat.generating = False
            await pilot.pause(0.2)
            assert stop.has_class("-disabled") and list(chat.query(FooterKey)) == keys
            # a focused input takes the one-letter screen keys, and the footer shows their
            # alt+letter twins instead (a rebuild: other keys); Esc brings the letters back
            def shown_keys():
                return [k.key for k in chat.query(FooterKey) if k.display and k.key != "ctrl+p"]

            letters = shown_keys()
            assert "m" in letters and "alt+m" not in letters
            chat.query_one("#chat-prompt").focus()
            await pilot.pause(0.2)
            in_field = shown_keys()
            assert "alt+m" in in_field and "m" not in in_field
            await pilot.press("escape")
            await pilot.pause(0.2)
            assert shown_keys() == letters
            keys = list(chat.query(FooterKey))
            chat.generating = True  # and in place again from there
            await pilot.pause(0.2)
            assert list(chat.query(FooterKey)) == keys
            chat.generating = False
            await pilot.pause(0.2)
            batches = app._batch_count
            app.action_go("train")
            assert app._batch_count == batches
            await wait_for(pilot, lambda: app.screen.query("#loss-table"), 5, "the Train screen")

    asyncio.run(main())


def test_keys_panel_lies_over_the_screen_and_leaves_its_widgets_in_place(loradeck_home):
    """F1 shows the keys panel over the Train screen: the log, table and chart keep their
    regions (no layout of the screen at a narrower width); the panel lists the screen's keys,
    and a second F1 hides it."""
    from textual.widgets import DataTable

    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.widgets.keys_panel import KeysPanel
    from loradeck.tui.widgets.loss_chart import LossChart

    run = write_run(loradeck_home, "demo-tiny-keys", training_events(steps=3, max_steps=50),
                    alive=False)

    async def main():
        app = LoradeckApp(run_id=run.id, draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            train = app.screen
            await wait_for(pilot, lambda: train.drawn and train.query(KeysPanel), 10,
                           "the run's events and the hidden keys panel")
            widgets = [train.query_one("#train-log", Log), train.query_one(DataTable),
                       train.query_one(LossChart)]
            before = [w.region for w in widgets]
            await pilot.press("f1")
            panel = train.query_one(KeysPanel)
            await wait_for(pilot, lambda: panel.shown and panel.region.width > 0, 5,
                           "the panel shown")
            assert [w.region for w in widgets] == before
            assert panel.region.right == 100 and panel.region.height == 32
            assert panel.region.overlaps(widgets[0].region)  # drawn over the log
            drawn = "\n".join(strip.text for strip in train._compositor.render_strips(app.size))
            # the Start key's tooltip ("Start a training run..."): only the panel shows it (the
            # footer's "s Start a Queue" is there either way)
            assert drawn.count("Start a") == 2
            await pilot.press("f1")
            await pilot.pause(0.1)
            assert not panel.shown and [w.region for w in widgets] == before
            drawn = "\n".join(strip.text for strip in train._compositor.render_strips(app.size))
            assert drawn.count("Start a") == 1

    asyncio.run(main())


async def _a_key_comes(app, key: str = "x") -> None:
    """A key reaches the app as a terminal's would (its frame is not drawn yet)."""
    from textual import events

    event = events.Key(key, key)
    event.set_sender(app)
    await app.on_event(event)


def test_reply_update_waits_for_the_frame_of_a_key(loradeck_home):
    """While a person types into the prompt, a streamed reply's update waits for the frame
    that shows the latest key and runs right after it; with nobody typing (no key for a
    while, or the focus out of the prompt), it runs at once."""
    from textual.widgets import Input

    from loradeck.tui.app import LoradeckApp

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            reply, stream = await new_reply(app, pilot)
            prompt = app.screen.query_one("#chat-prompt", Input)
            prompt.focus()
            await pilot.pause(0.1)
            await stream.write("first words ")
            await wait_for(pilot, lambda: stream.updates == 1, 3, "the first update")
            frames = []
            display = app._display
            app._display = lambda s, r: (display(s, r), frames.append(stream.updates))
            await _a_key_comes(app)
            await stream.write("more words ")
            stream._wake.set()
            for _ in range(20):
                await asyncio.sleep(0)
            if app._key_unshown:  # no frame yet: the update must wait for it
                assert stream.updates == 1
            await wait_for(pilot, lambda: stream.updates == 2, 3, "the update after the frame")
            assert frames and frames[0] == 1  # the key's frame was drawn before the update
            assert prompt.value.endswith("x")
            await _a_key_comes(app, "y")
            prompt.blur()  # the focus out of the prompt: nobody typing, no waiting
            assert app.in_input_gap()
            prompt.focus()
            await pilot.pause(0.6)  # no key for longer than TYPING_WINDOW: no waiting
            assert app.in_input_gap()
            await asyncio.wait_for(app.input_gap(5.0), 0.1)
            await stream.stop()

    asyncio.run(main())


def test_streamed_chunk_append_holds_no_frame_back(loradeck_home):
    """Appending to a reply's Markdown (updating its last block, mounting new ones) holds no
    batch across its awaits: frames, and the keys they show, go on meanwhile."""
    from loradeck.tui.app import LoradeckApp

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            reply, stream = await new_reply(app, pilot)
            chunk = reply.chunks()[-1]
            await chunk.append("a paragraph")
            task = asyncio.ensure_future(chunk.append(" goes on.\n\n" + _paragraphs(4)))
            batched = []
            while not task.done():
                batched.append(app._batch_count)
                await asyncio.sleep(0)
            assert len(batched) > 1 and not any(batched)
            await task
            assert chunk.source.startswith("a paragraph goes on.") and len(chunk.children) == 5
            await stream.stop()

    asyncio.run(main())
