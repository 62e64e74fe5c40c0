"""The Chat and Push screens by keys: streamed replies from a finished run with time to first
token, base and tuned side by side from one model load, stop and clear; merge and push to the
tests' local Hub server with the repo's address shown; failures in place; snapshots."""

from __future__ import annotations

import asyncio

import pytest
from textual.widgets import Input, Markdown, Switch

from tests.helpers.app import screen_text, small_demo_config, wait_for
from tests.helpers.hub_server import TOKEN, serve
from tests.helpers.snapshots import (  # noqa: F401  (fixtures)
    FINISHED_RUN_ID,
    finished_run,
    finished_run_dir,
)


def _run(coro):
    return asyncio.run(coro)


async def _set_field(pilot, field_id: str, value: str) -> None:
    """Move focus to an input with tab, clear it and type ``value`` (keys only)."""
    app = pilot.app
    for _ in range(20):
        if app.screen.focused is not None and app.screen.focused.id == field_id:
            break
        await pilot.press("tab")
    assert app.screen.focused.id == field_id, f"could not reach #{field_id} with tab"
    await pilot.press("home", "ctrl+k", *value)


async def _prompt(pilot, text: str) -> None:
    await _set_field(pilot, "chat-prompt", text)
    await pilot.press("enter")


# ---- chat --------------------------------------------------------------------------------


@pytest.mark.slow
def test_chat_stream_compare_stop_clear(finished_run, monkeypatch):
    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.screens.chat import ChatScreen

    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    async def main():
        app = LoradeckApp(run_id=FINISHED_RUN_ID, draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("c")
            screen = app.screen
            assert isinstance(screen, ChatScreen)
            assert screen.query_one("#chat-target", Input).value == FINISHED_RUN_ID
            await _set_field(pilot, "set-temperature", "0")
            await _set_field(pilot, "set-max_new_tokens", "12")
            tuned = screen.query_one("#pane-tuned")
            await _prompt(pilot, "한국의 수도는 어디인가요?")
            await wait_for(pilot, lambda: tuned.replies() and tuned.replies()[-1].finished,
                           180, "the first reply")
            reply = tuned.replies()[-1]
            assert screen.loaded is not None and screen.loaded.info.get("adapter") is True
            assert reply.text and reply.done is not None and reply.done.adapter is True
            assert reply.stats.startswith("ttft ") and "tok/s" in reply.stats
            # streamed into the Markdown widget: its document is the reply, token by token
            assert reply.query_one(Markdown).source == reply.text
            turns = [t.text for t in tuned.query("UserTurn")]
            assert turns == ["한국의 수도는 어디인가요?"]
            assert "ttft" in screen_text(app)
            pid = screen.client.proc.pid
            loaded = screen.loaded

            # base and tuned side by side: the same prompt, one model, adapter off then on
            await pilot.press("ctrl+b")
            assert screen.compare and screen.query_one("#pane-base").display
            base = screen.query_one("#pane-base")
            await _prompt(pilot, "Say hello.")
            await wait_for(pilot, lambda: base.replies() and base.replies()[-1].finished
                           and len(tuned.replies()) == 2 and tuned.replies()[-1].finished,
                           120, "base and tuned replies")
            b, t = base.replies()[-1], tuned.replies()[-1]
            assert b.done.adapter is False and t.done.adapter is True
            assert b.text != t.text  # greedy decoding: the adapter changes the reply
            assert "ttft" in b.stats and "ttft" in t.stats
            assert screen.client.proc.pid == pid and screen.loaded is loaded  # no reload

            # stop a long reply mid-stream
            await pilot.press("ctrl+b")
            assert not screen.compare
            await _set_field(pilot, "set-max_new_tokens", "4000")
            await _set_field(pilot, "set-temperature", "0.8")
            await _prompt(pilot, "Tell a long story.")
            await wait_for(pilot, lambda: len(tuned.replies()) == 3 and tuned.replies()[-1].text,
                           60, "the first tokens")
            assert screen.generating and screen.check_action("stop", ()) is True
            await pilot.press("ctrl+g")
            await wait_for(pilot, lambda: not screen.generating, 60, "the reply to stop")
            # stopped: the turn leaves the view and the conversation at once, and the prompt
            # is back in the field (as oterm does)
            assert len(tuned.replies()) == 2
            assert [t.content for t in tuned.conversation.turns if t.role == "user"] == [
                "한국의 수도는 어디인가요?", "Say hello."]
            assert screen.query_one("#chat-prompt", Input).value == "Tell a long story."
            assert "reply stopped" in str(screen.query_one("#chat-message").render())
            assert screen.check_action("stop", ()) is None

            # an error reply (longer than the model's context): gone from both, the prompt
            # back, and the next request carries only the turns answered
            await _set_field(pilot, "set-max_new_tokens", "8")
            await _set_field(pilot, "chat-prompt", "word")
            screen.query_one("#chat-prompt", Input).value = "word " * 3000  # too long to type
            await pilot.press("enter")
            message = screen.query_one("#chat-message")
            await wait_for(pilot, lambda: message.has_class("-error"), 60, "the error reply")
            assert "context" in str(message.render()) and len(tuned.replies()) == 2
            assert screen.query_one("#chat-prompt", Input).value.strip().startswith("word word")
            await _prompt(pilot, "Hi")
            await wait_for(pilot, lambda: len(tuned.replies()) == 3
                           and tuned.replies()[-1].finished, 60, "the reply after the error")
            assert tuned.replies()[-1].done.prompt_tokens < 400  # no 3000-word turn in it
            assert [t.content for t in tuned.conversation.turns if t.role == "user"][-1] == "Hi"
            saved = tuned.side()
            assert len(saved.turns) == 6 and all("word word" not in t.content
                                                 for t in saved.turns)

            # bad sampling settings: one line in place, nothing sent
            await _set_field(pilot, "set-top_p", "1.5")
            await _prompt(pilot, "Hi")
            assert message.has_class("-error") and "top_p" in str(message.render())
            assert len(tuned.replies()) == 3

            # clear
            await pilot.press("ctrl+l")
            await pilot.pause(0.2)
            assert not tuned.replies() and tuned.conversation.turns == []

    _run(main())


def test_chat_unknown_model_fails_in_place(loradeck_home):
    from loradeck.tui.app import LoradeckApp

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("c")
            screen = app.screen
            await _set_field(pilot, "chat-target", str(loradeck_home / "no-such-model"))
            await _prompt(pilot, "Hello")
            message = screen.query_one("#chat-message")
            await wait_for(pilot, lambda: message.has_class("-error"), 60, "the error")
            assert "no-such-model" in str(message.render())
            assert not screen.generating and screen.check_action("send", ()) is True

    _run(main())


# ---- push --------------------------------------------------------------------------------


def _hub_env(monkeypatch, hub) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("LORADECK_PUSH_BACKOFF", "0.05")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
def test_merge_then_push_public_by_keys(finished_run, tmp_path, monkeypatch):
    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.screens.push import PushScreen

    async def main(hub):
        app = LoradeckApp(run_id=FINISHED_RUN_ID, draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("p")
            screen = app.screen
            assert isinstance(screen, PushScreen)
            await wait_for(pilot, lambda: screen.summary.get("has_adapter"), 60, "the run")
            assert screen.query_one("#push-repo", Input).value == FINISHED_RUN_ID
            assert screen.query_one("#push-public", Switch).value is False  # private default
            card = screen.query_one("#push-card", Markdown)
            await wait_for(pilot, lambda: "LoRA settings" in card.source, 20, "the card")
            assert screen.check_action("merge", ()) is True
            await pilot.press("ctrl+g")
            seen = set()

            def merged():
                seen.add(str(screen.query_one("#push-status").render()))
                return screen.busy is None and screen.summary.get("has_merged")

            await wait_for(pilot, merged, 240, "the merge", step=0.05)
            assert any(s.startswith("merging") for s in seen), seen
            assert screen.check_action("merge", ()) is None  # merged already
            # public, by keys: tab to the switch and toggle it
            for _ in range(10):
                if isinstance(screen.focused, Switch) and screen.focused.id == "push-public":
                    break
                await pilot.press("tab")
            await pilot.press("space")
            assert screen.query_one("#push-public", Switch).value is True
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: screen.repo_url, 180, "the push")
            url = f"{hub.url}/tester/{FINISHED_RUN_ID}"
            assert screen.repo_url == url
            await pilot.pause(0.3)
            text = screen_text(app)
            assert f"pushed to {url}" in text
            assert TOKEN not in text
            files = hub.files(f"tester/{FINISHED_RUN_ID}")
            assert "model.safetensors" in files and "README.md" in files
            assert "adapter_config.json" not in files  # the merged model, not the adapter
            assert hub.repos[f"tester/{FINISHED_RUN_ID}"].private is False

    with serve(tmp_path / "hub") as hub:
        _hub_env(monkeypatch, hub)
        _run(main(hub))


def test_push_failure_shown_in_place_without_the_token(finished_run, tmp_path, monkeypatch):
    from loradeck.tui.app import LoradeckApp

    async def main(hub):
        app = LoradeckApp(run_id=FINISHED_RUN_ID, draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("p")
            screen = app.screen
            await wait_for(pilot, lambda: screen.summary.get("has_adapter"), 60, "the run")
            for _ in range(10):  # adapter only: no merge needed before the failure
                if isinstance(screen.focused, Switch) and screen.focused.id == "push-adapter":
                    break
                await pilot.press("tab")
            await pilot.press("space")
            assert screen.query_one("#push-adapter", Switch).value is True
            await pilot.press("ctrl+s")
            message = screen.query_one("#push-message")
            await wait_for(pilot, lambda: message.has_class("-error"), 120, "the error")
            assert screen.repo_url is None and screen.busy is None
            text = screen_text(app)
            assert "push failed" in text and wrong not in text and TOKEN not in text
            assert screen.check_action("push", ()) is True  # try again

    wrong = "hf_wrongTOKENwrongTOKEN1234"
    with serve(tmp_path / "hub") as hub:
        _hub_env(monkeypatch, hub)
        monkeypatch.setenv("HF_TOKEN", wrong)
        _run(main(hub))


# ---- snapshots ----------------------------------------------------------------------------


def test_chat_keeps_the_prompt_on_errors_and_reaches_fields_and_screens_by_key(loradeck_home):
    """Enter with no model keeps what was typed; ctrl+t goes to the model field; alt+letter
    leaves the prompt for another screen (the letter alone is typed as text there)."""
    from loradeck.tui.app import LoradeckApp

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("c")
            screen = app.screen
            prompt = screen.query_one("#chat-prompt", Input)
            assert app.focused is prompt
            await pilot.press(*"Tell me about Seoul", "enter")
            message = screen.query_one("#chat-message")
            await wait_for(pilot, lambda: message.has_class("-error"), 30, "the error")
            assert "name what to chat with" in str(message.render())
            assert prompt.value == "Tell me about Seoul"  # nothing typed is lost
            await pilot.press("d")  # a letter in the prompt is text, not a screen key
            assert app.current_mode == "chat" and prompt.value.endswith("Seould")
            await pilot.press("ctrl+t")
            assert app.focused is screen.query_one("#chat-target", Input)
            await pilot.press(*str(loradeck_home / "missing-model"), "enter")
            await wait_for(pilot, lambda: "missing-model" in str(message.render()), 60,
                           "the load error")
            assert prompt.value == "Tell me about Seould"
            prompt.focus()
            await pilot.press("alt+d")
            assert app.current_mode == "data"

    _run(main())
