"""The Eval screen and the Chat screen's blind A/B votes, by keys: an evaluation started with
ctrl+s runs as a job that goes on when the app closes, its scores and answers shown; a bad
choice is said in place; votes go to the run's arena.jsonl and the win rate is shown."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from textual.widgets import DataTable, Input

from loradeck.engine.evals import arena, report
from loradeck.engine.evals.rows import save_held_out
from tests.helpers.app import screen_text, small_demo_config, wait_for
from tests.helpers.snapshots import (  # noqa: F401  (fixtures)
    FINISHED_RUN_ID,
    finished_run,
    finished_run_dir,
)

pytestmark = pytest.mark.slow

HELD_OUT = [({"messages": [{"role": "user", "content": "What is the capital of France?"},
                           {"role": "assistant", "content": "The capital of France is Paris."}]},
             "demo row 1"),
            ({"prompt": "The sky is", "completion": " blue."}, "demo row 2")]


def test_an_evaluation_started_by_keys_runs_as_a_job_and_is_shown(finished_run, monkeypatch):
    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.screens.eval import EvalScreen

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    save_held_out(finished_run.dir, HELD_OUT)

    async def main():
        app = LoradeckApp(run_id=FINISHED_RUN_ID, draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("e")
            screen = app.screen
            assert isinstance(screen, EvalScreen)
            await wait_for(pilot, lambda: screen.summary, 20, "the run")
            assert "no evaluation yet" in screen_text(app)
            await pilot.press("tab", "2", "tab", "0")  # rows: 2; max new tokens: 0
            await pilot.press("ctrl+s")
            await pilot.pause(0.2)
            assert "max new tokens: a whole number from 1 to 4096" in screen_text(app)
            await pilot.press("backspace", "8", "ctrl+s")
            await wait_for(pilot, lambda: screen.result is not None, 300, "the evaluation")
            scores = screen.query_one("#eval-scores", DataTable)
            assert scores.row_count == 2
            assert "done: 2 models on 2 rows" in screen_text(app)
            await pilot.press("shift+tab", "shift+tab", "v")
            rows = screen.query_one("#eval-row-table", DataTable)
            assert rows.row_count == 2 and len(screen.query(".eval-answer")) == 2
            assert "What is the capital of France?" in screen_text(app)

    asyncio.run(main())
    saved = report.latest(finished_run.dir)
    assert [m["name"] for m in saved["models"]] == ["base", "adapter"]
    assert saved["max_new_tokens"] == 8


def test_the_evaluation_goes_on_when_the_app_closes(finished_run, monkeypatch):
    from loradeck.tui.app import LoradeckApp

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    save_held_out(finished_run.dir, HELD_OUT)

    async def main():
        app = LoradeckApp(run_id=FINISHED_RUN_ID, draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("e")
            screen = app.screen
            await wait_for(pilot, lambda: screen.summary, 20, "the run")
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: screen._proc is not None, 20, "the job")
            return screen._proc.pid

    pid = asyncio.run(main())  # the app is gone
    deadline = time.monotonic() + 300
    while report.latest(finished_run.dir) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    saved = report.latest(finished_run.dir)
    assert saved is not None and saved["models"], f"the job (pid {pid}) left no result"
    ended = [json.loads(line) for line in finished_run.events_path.read_text().splitlines()
             if '"eval"' in line]
    assert ended[-1]["stage"] == "done"


def test_blind_votes_on_the_chat_screen(finished_run, monkeypatch):
    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.screens.chat import ChatScreen

    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    async def main():
        app = LoradeckApp(run_id=FINISHED_RUN_ID, draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("c")
            screen = app.screen
            assert isinstance(screen, ChatScreen)
            await pilot.press("f6")
            assert screen.arena and "blind A/B" in screen_text(app)
            for n, vote in enumerate(("a", "b", "equals_sign"), start=1):
                prompt = screen.query_one("#chat-prompt", Input)
                prompt.focus()
                await pilot.press(*"Name a colour.", "enter")
                await wait_for(pilot, lambda: screen.vote_pending, 300, "both answers")
                assert screen.query_one("#pane-base").border_title == "A"
                assert "a: A · b: B · =: tie" in screen_text(app)
                await pilot.press(vote)
                await wait_for(pilot, lambda n=n: len(arena.votes(finished_run.dir)) == n, 10,
                               "the vote")
                assert "vote saved (A was " in screen_text(app)
                assert screen.query_one("#pane-base").border_title in ("A · tuned", "A · base")
            assert "win rate" in screen_text(app)

    asyncio.run(main())
    votes = arena.votes(finished_run.dir)
    assert [v["vote"] for v in votes] == ["A", "B", "tie"]
    assert all({v["a"], v["b"]} == {"tuned", "base"} for v in votes)
    assert all(v["answer_a"] and v["answer_b"] for v in votes)
    t = arena.tally(finished_run.dir)
    assert t.wins + t.losses == 2 and t.ties == 1
