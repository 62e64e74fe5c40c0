"""The Train and Runs screens: events folded into the view (unit), a demo run started, stopped
and resumed by keys, reattaching from the runs list, and snapshots."""

from __future__ import annotations

import asyncio
import json

import pytest
from textual.widgets import DataTable, Log, Sparkline

from loradeck.engine.runs.events import EventTail
from loradeck.tui.event_text import fmt_duration
from loradeck.tui.run_view import RunView
from tests.helpers.app import (
    T0,
    screen_text,
    small_demo_config,
    training_events,
    wait_for,
    write_run,
)
from tests.helpers.snapshots import (  # noqa: F401  (fixtures)
    runs_of_every_kind,
)

# ---- run_view: folding events into the view ------------------------------------------------


def table_rows(view: RunView) -> list:
    """The view's loss-table rows in step order."""
    return [view.rows[s] for s in sorted(view.rows)]


def test_fold_builds_loss_history_table_progress_and_phase():
    view = RunView()
    delta = view.feed(training_events(steps=12, max_steps=12, eval_every=4))
    assert view.phase == "done" and view.done is not None
    assert view.step == 12 and view.max_steps == 12 and view.epoch == 1.0
    assert len(view.train_series()) == 12
    assert view.eval_series() == [view.eval_losses[s] for s in (4, 8, 12)]
    rows = table_rows(view)
    assert [r.step for r in rows] == list(range(1, 13))
    # train and eval loss logged at the same step share one table row
    assert rows[3].loss is not None and rows[3].eval_loss == pytest.approx(rows[3].loss + 0.12)
    assert rows[3].cells()[:3] == ("4", f"{rows[3].loss:.4f}", f"{rows[3].eval_loss:.4f}")
    assert rows[0].eval_loss is None and rows[0].cells()[2] == "-"
    assert view.checkpoints == [4, 8, 12]
    assert view.fraction() == 1.0
    assert "step 12/12" in view.progress_text() and "812 tok/s" in view.progress_text()
    assert "0.61 GB" in view.progress_text()
    assert delta.losses_changed and delta.phase_changed and len(delta.rows) == 12
    # log lines: times relative to the first event, so the same file reads the same anywhere
    assert delta.new_lines[0] == "[ 0:00] queued: run created"
    assert any(line.startswith("[ 0:07] step 4/12  loss") for line in delta.new_lines)
    assert any("adapter 65.54k parameters on a 532.35k base (10.96%)" in ln for ln in view.log)
    assert delta.new_lines[-1].startswith("[ 0:16] done: adapter saved in adapter/, train loss ")
    assert delta.new_lines[-1].endswith(", in 0:16")
    # one line for the end: the closing status repeats the done event, so it has no line
    assert sum("done:" in line for line in delta.new_lines) == 1


def test_fold_is_incremental_and_matches_one_pass():
    events = training_events(steps=8, max_steps=8, eval_every=4)
    whole = RunView()
    whole.feed(events)
    parts = RunView()
    lines = []
    for i in range(0, len(events), 3):
        lines += parts.feed(events[i:i + 3]).new_lines
    assert parts.train_series() == whole.train_series()
    assert parts.eval_series() == whole.eval_series()
    assert [r.cells() for r in table_rows(parts)] == [r.cells() for r in table_rows(whole)]
    assert lines == list(whole.log)
    assert parts.feed([]).empty


def test_fold_resumed_run_counts_repeated_steps_once():
    view = RunView()
    view.feed(training_events(steps=6, max_steps=10, eval_every=4, end="stopped"))
    assert view.phase == "stopped" and view.can_resume(alive=False)
    assert not view.can_stop(alive=False)
    # the job resumes from checkpoint-4 and logs steps 5.. again
    again = [{"t": 2e9, "type": "status", "phase": "queued", "message": "resuming from "
              "checkpoint-4"},
             {"t": 2e9 + 1, "type": "status", "phase": "training", "message": "training"}]
    again += [{"t": 2e9 + 2 + s, "type": "metrics", "step": s, "max_steps": 10, "loss": 1.0 + s}
              for s in range(5, 11)]
    delta = view.feed(again)
    assert sorted(view.train_losses) == list(range(1, 11))
    assert view.train_losses[5] == 6.0  # the resumed value replaces the old one
    assert len(table_rows(view)) == 10
    assert [r.step for r in delta.rows] == list(range(5, 11))
    assert view.phase == "training"


def test_phase_interrupted_and_keys_that_apply():
    view = RunView()
    view.feed(training_events(steps=3, max_steps=10, end=None))
    assert view.display_phase(alive=True) == "training"
    assert view.can_stop(alive=True) and not view.can_resume(alive=True)
    # the job died without a final status: the view says so and offers resume
    assert view.display_phase(alive=False) == "failed"
    assert "resume it to continue" in view.status_text(alive=False)
    assert view.can_resume(alive=False) and not view.can_stop(alive=False)
    done = RunView()
    done.feed(training_events(steps=3, max_steps=3))
    assert not done.can_resume(alive=False) and not done.can_stop(alive=False)


def test_fold_errors_and_after_training_phases():
    view = RunView()
    view.feed(training_events(steps=5, max_steps=10, end="failed"))
    assert view.phase == "failed"
    text = view.status_text(alive=False)
    assert "oom: out of GPU memory at step 5 (lower training.batch_size)" in text
    assert any("ERROR (oom): out of GPU memory" in ln for ln in view.log)
    done = RunView()
    done.feed(training_events(steps=3, max_steps=3))
    done.feed([{"t": T, "type": "status", "phase": p, "message": m} for T, p, m in (
        (T0 + 50, "merging", "merging"), (T0 + 60, "merged", "merged"),
        (T0 + 70, "pushing", "pushing to tester/x"))]
        + [{"t": T0 + 80, "type": "log", "level": "info",
            "text": "pushed the merged model to http://127.0.0.1:9/tester/x (private)"},
           {"t": T0 + 80, "type": "status", "phase": "pushed", "message": "pushed"}])
    assert done.phase == "done" and done.after_phase == "pushed"
    assert done.repo_url == "http://127.0.0.1:9/tester/x"


def test_log_is_bounded_and_durations_read_well():
    view = RunView(max_log_lines=50)
    delta = view.feed([{"t": T0 + i, "type": "log", "level": "info", "text": f"line {i}"}
                       for i in range(500)])
    assert len(view.log) == 50 and len(delta.new_lines) == 50
    assert delta.new_lines[-1].endswith("line 499")
    assert fmt_duration(75) == "1:15" and fmt_duration(3725) == "1:02:05"
    assert fmt_duration(None) == "-"


def test_torn_last_line_is_read_once_complete(tmp_path):
    path = tmp_path / "events.jsonl"
    first, second = training_events(steps=1, max_steps=1, end=None)[-2:]
    line2 = json.dumps(second)
    path.write_text(json.dumps(first) + "\n" + line2[:10], encoding="utf-8")
    tail, view = EventTail(path), RunView()
    view.feed(tail.poll())
    assert view.step == 0  # the half-written metrics line is not read yet
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line2[10:] + "\n")
    view.feed(tail.poll())
    assert view.step == 1 and view.train_series() == [second["loss"]]


# ---- Pilot: the Train screen by keys (a real run is started, stopped and resumed by keys in
# ---- tests/app/test_app_flow.py, which also chats with it and pushes it) ---------------------


def _run(coro):
    return asyncio.run(coro)


def test_start_failure_is_shown_in_place(monkeypatch, tmp_path):
    """A config whose dataset is missing: start fails with one line on the screen, no crash."""
    from loradeck.engine import config as cfg
    from loradeck.tui.app import LoradeckApp

    bad = cfg.from_overrides([f"dataset.path={tmp_path / 'missing.jsonl'}"],
                             base=small_demo_config())

    async def main():
        app = LoradeckApp(draft=bad)
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("t", "s")
            screen = app.screen
            message = screen.query_one("#train-message")
            await wait_for(pilot, lambda: message.has_class("-error"), 60, "the error message")
            assert "missing.jsonl" in str(message.render())
            assert screen.run_id is None and app.current_run_id is None
            assert screen.check_action("start", ()) is True

    _run(main())


def test_reopening_shows_the_same_history(loradeck_home):
    """The view comes from events.jsonl alone: two app sessions on one run show the same."""
    from loradeck.tui.app import LoradeckApp

    write_run(loradeck_home, "demo-tiny-history", training_events(steps=12, max_steps=12))

    async def session() -> tuple[list[float], list[str], int]:
        app = LoradeckApp(run_id="demo-tiny-history")
        async with app.run_test(size=(100, 32)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: screen.drawn, 10, "the run's events")
            table = screen.query_one("#loss-table", DataTable)
            return (list(screen.query_one("#train-spark", Sparkline).data),
                    list(screen.query_one(Log).lines), table.row_count)

    first, second = _run(session()), _run(session())
    assert first == second
    assert len(first[0]) == 12 and first[2] == 12
    assert first[1][-1].startswith("[ 0:16] done: adapter saved in adapter/")


# ---- the runs list ------------------------------------------------------------------------


def test_runs_list_and_reattach_by_keys(loradeck_home):
    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.screens.runs import RunsScreen
    from loradeck.tui.screens.train import TrainScreen

    runs_of_every_kind(loradeck_home)

    async def main():
        app = LoradeckApp()
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("r")
            screen = app.screen
            assert isinstance(screen, RunsScreen)
            await wait_for(pilot, lambda: screen.loaded, 10, "the runs")
            table = screen.query_one("#runs-table", DataTable)
            assert table.row_count == 4
            phases = {k: screen.rows[k].phase for k in screen.rows}
            assert phases == {"demo-tiny-a-done": "done", "demo-tiny-b-failed": "failed",
                              "demo-tiny-c-stopped": "stopped",
                              "demo-tiny-d-running": "training ●"}
            assert screen.rows["demo-tiny-c-stopped"].step == "6/12"
            # keys follow the highlighted run: resume a stopped one, stop a running one
            await pilot.press("down", "down")
            assert screen.selected().id == "demo-tiny-c-stopped"
            assert screen.check_action("resume", ()) is True
            assert screen.check_action("stop", ()) is None
            await pilot.press("down")
            assert screen.check_action("stop", ()) is True
            assert screen.check_action("resume", ()) is None
            # a run that appears later shows up on the next refresh
            write_run(loradeck_home, "demo-tiny-e-new", training_events(steps=2, end="stopped"),
                      created=5)
            await wait_for(pilot, lambda: "demo-tiny-e-new" in screen.rows, 10, "the new run")
            # enter reattaches: the Train screen shows that run, rebuilt from its events
            await pilot.press("up")
            assert screen.selected().id == "demo-tiny-c-stopped"
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen), 5, "Train")
            train = app.screen
            assert app.current_run_id == "demo-tiny-c-stopped"
            await wait_for(pilot, lambda: train.drawn and train.run_id == "demo-tiny-c-stopped",
                           10, "the run's history")
            assert sorted(train.view.train_losses) == [1, 2, 3, 4, 5, 6]
            assert train.query_one("#loss-table", DataTable).row_count == 6
            assert "stopped" in screen_text(app)

    _run(main())


# ---- snapshots ----------------------------------------------------------------------------


def test_palette_offers_the_train_commands_that_apply(loradeck_home):
    """ctrl+p lists the screen's commands; one that does not apply now is left out."""
    from textual.command import CommandList, CommandPalette

    from loradeck.tui.app import LoradeckApp

    write_run(loradeck_home, "demo-tiny-stopped", training_events(steps=6, max_steps=12,
                                                                  end="stopped"))

    async def main():
        app = LoradeckApp(run_id="demo-tiny-stopped", draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: screen.drawn, 10, "the run")

            async def offered(query: str) -> list[str]:
                await pilot.press("ctrl+p", *query)
                palette = app.screen
                assert isinstance(palette, CommandPalette)
                await pilot.pause(0.5)
                prompts = [str(o.prompt) for o in palette.query_one(CommandList).options]
                await pilot.press("escape")
                await pilot.pause(0.1)
                return prompts

            assert any("Resume" in p for p in await offered("resume"))
            assert any("Start" in p for p in await offered("start"))
            assert not any(p.startswith("Stop") for p in await offered("stop"))

    _run(main())


def test_event_lines_share_one_wording_in_the_app_and_the_cli():
    """The app's live log and ``loradeck logs`` word each event alike; the CLI's lines carry
    the clock time and what a scrollback has room for (paths, throughput, ETA, every level)."""
    import re

    from loradeck.tui.commands.logs import human_line
    from loradeck.tui.event_text import event_text

    events = training_events(steps=4, max_steps=4, eval_every=2) + [
        {"t": T0 + 9, "type": "log", "level": "warning", "text": "slow disk"},
        {"t": T0 + 9, "type": "log", "level": "info", "text": "hello"},
        {"t": T0 + 9, "type": "error", "kind": "oom", "message": "out of memory",
         "hint": "lower training.batch_size"}]
    view = RunView()
    view.feed(events)
    for ev in events:
        short, full = event_text(ev), event_text(ev, full=True)
        if short is not None:  # the CLI's line is the app's, with more after it
            assert full.startswith(short) or full == f"info: {short}", (short, full)
            assert re.fullmatch(r"\[ *\d+:\d\d\] ", view.format_line(ev)[:-len(short)])
            assert re.fullmatch(r"\d\d:\d\d:\d\d ", human_line(ev)[:-len(full)])
        else:  # neither has a line for it
            assert full is None and human_line(ev) is None
    texts = [event_text(ev) for ev in events]
    full = [event_text(ev, full=True) for ev in events]
    assert "checkpoint saved at step 2" in texts
    assert "checkpoint saved at step 2: checkpoints/checkpoint-2" in full
    assert any(t and t.endswith("812 tok/s  ETA 0:00") for t in full)
    assert not any(t and "tok/s" in t for t in texts)
    assert texts[-3:] == ["WARNING: slow disk", "hello",
                          "ERROR (oom): out of memory (lower training.batch_size)"]
    assert full[-2] == "info: hello"
