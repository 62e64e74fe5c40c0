"""Saving a chat: Markdown to read, JSON for scripts, JSONL rows to train on; whole or not at
all, and an existing file kept."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from loradeck.engine.errors import UsageError
from loradeck.engine.serve import transcript
from loradeck.engine.serve.transcript import Side, Turn

TURNS = [Turn("user", "한국의 수도는?"), Turn("assistant", "서울입니다.", "ttft 0.21 s · 9 tokens"),
         Turn("user", "And Japan?"), Turn("assistant", "Tokyo.", "ttft 0.10 s · 3 tokens")]
NOW = datetime(2026, 12, 3, 17, 0, tzinfo=UTC)


def test_markdown_sets_each_turn_apart_with_its_figures(tmp_path):
    text = transcript.render(tmp_path / "c.md", "run r1 (demo:tiny + adapter)",
                             [Side("tuned", TURNS)], "Be brief.", NOW)
    assert text == ("# Chat with run r1 (demo:tiny + adapter)\n\nsaved 2026-12-03 17:00 UTC\n\n"
                    "system: Be brief.\n\n**You**\n\n한국의 수도는?\n\n**Model**\n\n서울입니다.\n\n"
                    "_ttft 0.21 s · 9 tokens_\n\n**You**\n\nAnd Japan?\n\n**Model**\n\nTokyo.\n\n"
                    "_ttft 0.10 s · 3 tokens_\n")


def test_side_by_side_panes_each_get_a_heading(tmp_path):
    text = transcript.render(tmp_path / "c.md", "m", [Side("base", TURNS[:2]),
                                                      Side("tuned", TURNS[:2])], None, NOW)
    assert "## base" in text and "## tuned" in text and text.count("**You**") == 2


def test_jsonl_is_a_training_row_and_json_keeps_the_figures(tmp_path):
    rows = transcript.render(tmp_path / "c.jsonl", "m", [Side("tuned", TURNS)], "Be brief.")
    assert [json.loads(line) for line in rows.splitlines()] == [{"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "한국의 수도는?"},
        {"role": "assistant", "content": "서울입니다."}, {"role": "user", "content": "And Japan?"},
        {"role": "assistant", "content": "Tokyo."}]}]
    data = json.loads(transcript.render(tmp_path / "c.json", "m", [Side("tuned", TURNS)], None))
    assert data["model"] == "m" and data["sides"][0]["stats"] == [
        "ttft 0.21 s · 9 tokens", "ttft 0.10 s · 3 tokens"]


def test_an_existing_file_is_kept_unless_this_session_wrote_it(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("mine", encoding="utf-8")
    with pytest.raises(UsageError) as err:
        transcript.save(path, "m", [Side("chat", TURNS)])
    assert err.value.line() == f"{path}: the file exists; it was kept (give another name)"
    assert path.read_text(encoding="utf-8") == "mine"
    transcript.save(path, "m", [Side("chat", TURNS)], overwrite=True)
    assert path.read_text(encoding="utf-8").startswith("# Chat with m")


@pytest.mark.parametrize("case", ["nothing", "no-dir", "a-dir"])
def test_what_cannot_be_saved_is_said_in_one_line(tmp_path, case):
    sides = [Side("chat", [] if case == "nothing" else TURNS)]
    path = {"nothing": tmp_path / "a.md", "no-dir": tmp_path / "missing" / "a.md",
            "a-dir": tmp_path}[case]
    with pytest.raises(UsageError) as err:
        transcript.save(path, "m", sides)
    assert err.value.line() == {
        "nothing": "there is nothing to save yet (send a prompt first)",
        "no-dir": f"{tmp_path / 'missing'}: no such directory (create it, or save elsewhere)",
        "a-dir": f"{tmp_path}: is a directory (give a file name)"}[case]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_unique_names_in_a_folder(tmp_path):
    first = transcript.unique_path(tmp_path / "chats", "chat")
    first.write_text("x", encoding="utf-8")
    second = transcript.unique_path(tmp_path / "chats", "chat")
    assert first != second and second.parent == first.parent and second.suffix == ".md"
