"""Every screen at 80x24, as a new user on a small terminal meets it: what must stay in view
(the memory figure, the log's newest line, the navigation bar under F1, the state of a switch,
each knob's whole help), errors shown once and whole, chat turns set apart and saved, the
alt+letter screen keys in the footer; and a snapshot of each screen at that size."""

from __future__ import annotations

import asyncio
import functools
import json

from textual.widgets import Input, Label, Switch

from loradeck.tui.app import LoradeckApp
from loradeck.tui.run_view import RunView
from loradeck.tui.screens import changed_config
from tests.helpers.app import (  # noqa: F401  (a fixture)
    T0,
    no_blink,
    same_on_every_machine,
    screen_text,
    settle,
    small_demo_config,
    training_events,
    wait_for,
    write_run,
)
from tests.helpers.snapshots import (  # noqa: F401  (fixtures)
    conversation,
)

SMALL = (80, 24)
RUN = "demo-tiny-small"


def pilot(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return wrapper


def lines(app) -> list[str]:
    return screen_text(app).splitlines()


def resumed_events(stopped_at: int, max_steps: int) -> list[dict]:
    """What a resumed job appends: training again, with sample answers (a panel that appears
    above the log) and many more log lines."""
    evs = training_events(steps=max_steps, max_steps=max_steps, t0=T0 + 100)
    return [e for e in evs if e.get("step", 0) > stopped_at
            or (e["type"] == "status" and e["phase"] == "training") or e["type"] == "done"]


# ---- Train ---------------------------------------------------------------------------------

def test_the_memory_figure_stays_when_the_progress_line_is_narrow():
    view = RunView()
    view.feed(training_events(steps=7, max_steps=1200, end=None))
    full = view.progress_text()
    assert full.startswith("epoch ") and "ETA " in full and "tok/s" in full
    narrow = view.progress_text(width=36)
    assert narrow == "step 7/1200 · ETA 19:53 · 0.61 GB"
    assert view.progress_text(width=len(full)) == full


@pilot
async def test_train_progress_at_80x24_shows_eta_and_memory(loradeck_home):
    write_run(loradeck_home, RUN, training_events(steps=7, max_steps=1200, end=None))
    app = LoradeckApp(run_id=RUN, draft=small_demo_config())
    async with app.run_test(size=SMALL) as p:
        await wait_for(p, lambda: app.screen.loaded, 10, "the events")
        await p.pause(0.3)
        progress = next(line for line in lines(app) if "step 7/1200" in line)
        assert "ETA 19:53" in progress and progress.rstrip().endswith("0.61 GB")


@pilot
async def test_the_log_follows_after_a_stop_and_resume_at_80x24(loradeck_home):
    run = write_run(loradeck_home, RUN, training_events(steps=7, max_steps=40, end="stopped"))
    app = LoradeckApp(run_id=RUN, draft=small_demo_config())
    async with app.run_test(size=SMALL) as p:
        screen = app.screen
        await wait_for(p, lambda: screen.loaded, 10, "the events")
        log = screen.query_one("#train-log")
        with run.events_path.open("a", encoding="utf-8") as f:
            for event in resumed_events(7, 40):
                f.write(json.dumps(event, ensure_ascii=False) + "\n")
                f.flush()
                await p.pause(0.05)
        await wait_for(p, lambda: log.lines and log.lines[-1].endswith("in 0:16"), 20,
                       "the last line")
        await p.pause(0.3)
        assert "done: adapter saved in adapter/" in lines(app)[-3], screen_text(app)
        assert log.scroll_y == log.max_scroll_y

        # scrolled up by the person, it stays there; back at the end, it follows again
        log.scroll_home(animate=False, immediate=True)
        await p.pause(0.1)
        log.write_lines(["a line while scrolled up"])
        await p.pause(0.1)
        assert log.scroll_y == 0 and not log.following
        log.scroll_end(animate=False, immediate=True)
        await p.pause(0.1)
        log.write_lines(["a line at the end"])
        await p.pause(0.2)
        assert log.following and "a line at the end" in lines(app)[-3]


# ---- Data ----------------------------------------------------------------------------------

@pilot
async def test_a_file_error_is_shown_once_and_whole_at_80x24(demo_model, tmp_path):
    missing = tmp_path / "a-rather-long-folder-name" / "nope.jsonl"
    app = LoradeckApp(draft=changed_config(small_demo_config(), {"dataset.path": str(missing)}))
    async with app.run_test(size=SMALL) as p:
        await p.press("d")
        await settle(p, rounds=6)
        text = screen_text(app)
        assert text.count("dataset file not found") == 1, text
        assert "nope.jsonl: dataset file not found (check the path, or give a Hub dataset id" \
            in text and "(org/name) or demo)" in text  # wrapped, not cut
        assert "no training text: fix the error above" in text


@pilot
async def test_many_row_errors_are_listed_two_whole_and_counted(demo_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"instruction": f"q{i}", "response": ""}) + "\n"
                           for i in range(8)), encoding="utf-8")
    app = LoradeckApp(draft=changed_config(small_demo_config(), {"dataset.path": str(bad)}))
    async with app.run_test(size=SMALL) as p:
        await p.press("d")
        await settle(p, rounds=6)
        text = screen_text(app)
        assert ("bad.jsonl:1: empty response (column 'response') (fill it in or remove the "
                "row)") in text
        assert "bad.jsonl:2: empty response" in text
        assert "… and 6 more (select a row to see its error)" in text


# ---- LoRA ----------------------------------------------------------------------------------

@pilot
async def test_lora_help_moves_to_the_help_line_whole_at_80x24(demo_model):
    from loradeck.tui.screens.lora import LORA_KNOBS

    app = LoradeckApp(demo=True, draft=small_demo_config())
    async with app.run_test(size=SMALL) as p:
        await p.press("l")
        await settle(p)
        screen = app.screen
        assert screen.has_class("-narrow")
        assert not any(w.display for w in screen.query(".field-help"))
        await p.press("tab")  # the Method choice
        await p.pause(0.2)
        method = next(k for k in LORA_KNOBS if k.key == "lora.variant")
        help_lines = lines(app)[-5:-1]
        assert " ".join(line.strip() for line in help_lines) == method.help
    async with LoradeckApp(demo=True, draft=small_demo_config()).run_test(size=(120, 36)) as p:
        await p.press("l")
        await settle(p)
        assert not p.app.screen.has_class("-narrow")
        assert all(w.display for w in p.app.screen.query(".field-help"))


# ---- Push ----------------------------------------------------------------------------------

@pilot
async def test_push_switches_say_their_state(loradeck_home):
    write_run(loradeck_home, RUN, training_events(steps=7, max_steps=12, end="stopped"))
    app = LoradeckApp(run_id=RUN, draft=small_demo_config())
    async with app.run_test(size=SMALL) as p:
        await p.press("p")
        await p.pause(0.5)
        screen = app.screen
        row = next(line for line in lines(app) if "adapter only" in line)
        assert row.split() [:4] == ["public", "off", "adapter", "only"]
        for _ in range(10):
            if isinstance(screen.focused, Switch) and screen.focused.id == "push-public":
                break
            await p.press("tab")
        await p.press("space")
        await p.pause(0.2)
        assert screen.query_one("#push-public-state", Label).has_class("-on")
        row = next(line for line in lines(app) if "adapter only" in line)
        assert row.split()[:5] == ["public", "on", "adapter", "only", "off"]


# ---- app keys ------------------------------------------------------------------------------

@pilot
async def test_f1_leaves_the_navigation_bar_in_view(demo_model):
    app = LoradeckApp(demo=True, draft=small_demo_config())
    async with app.run_test(size=SMALL) as p:
        await settle(p)
        before = lines(app)[0]
        await p.press("f1")
        await p.pause(0.3)
        assert lines(app)[0] == before and "r Runs" in before
        assert "Type a name" in screen_text(app)  # the panel's keys are shown


@pilot
async def test_the_footer_shows_the_alt_keys_inside_a_field(demo_model):
    app = LoradeckApp(demo=True, draft=small_demo_config())
    async with app.run_test(size=SMALL) as p:
        await p.press("c")
        await p.pause(0.3)
        assert isinstance(app.focused, Input)  # the prompt: letters are typed there
        footer = lines(app)[-1]
        assert "alt+mdltcepr screens" in footer and "^y Save chat" in footer
        await p.press("escape")
        await p.pause(0.3)
        footer = lines(app)[-1]
        assert "mdltcepr screens" in footer and "alt+" not in footer


# ---- Chat ----------------------------------------------------------------------------------


@pilot
async def test_chat_turns_stand_apart_the_newest_stays_in_view_and_ctrl_y_saves(loradeck_home):
    write_run(loradeck_home, RUN, training_events(steps=12, max_steps=12))
    app = LoradeckApp(run_id=RUN, draft=small_demo_config())
    async with app.run_test(size=SMALL) as p:
        await p.press("c")
        screen = app.screen
        await conversation(screen, 8)
        await p.pause(0.5)
        pane = screen.query_one("#pane-tuned")
        assert pane.max_scroll_y > 0 and pane.scroll_y == pane.max_scroll_y
        text = screen_text(app)
        assert "answer 8: Seoul." in text and "question 1:" not in text
        user_turn = pane.query("UserTurn").last()
        assert user_turn.border_title == "you"
        assert "╭─ you " in text  # the user's turn in a labelled block of its own

        await p.press("ctrl+y")
        await p.pause(0.2)
        saved = sorted((loradeck_home / "runs" / RUN / "chats").glob("chat-*.md"))
        assert len(saved) == 1
        assert f"saved the chat to {saved[0]}" in str(screen.query_one("#chat-message").render())
        md = saved[0].read_text(encoding="utf-8")
        assert md.count("**You**") == 8 and "question 8: what is the capital of Korea?" in md
        assert "_ttft 0.21 s · 38.4 tok/s · 9 tokens_" in md
        assert app.focused is screen.query_one("#chat-prompt", Input)  # still typing


@pilot
async def test_ctrl_y_with_nothing_said_saves_nothing(loradeck_home):
    app = LoradeckApp(draft=small_demo_config())
    async with app.run_test(size=SMALL) as p:
        await p.press("c", "ctrl+y")
        await p.pause(0.2)
        message = app.screen.query_one("#chat-message")
        assert message.has_class("-error")
        assert "there is nothing to save yet (send a prompt first)" in str(message.render())
        assert not list((loradeck_home / "chats").glob("*.md"))


# ---- snapshots at 80x24 --------------------------------------------------------------------


