"""Data a new user brings: shapes SFT would misread refused by name before launch, Axolotl's
one-conversation file read as one row, and one policy for rows longer than max length, counted
the same on the Data screen, in ``loradeck train`` and in the run's info event."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loradeck.engine import config as cfg
from loradeck.engine.data import files as dataset_files
from loradeck.engine.data import prep as dataset_prep
from loradeck.engine.errors import LoradeckError
from tests.helpers.data_rows import TOOL_CALL_MESSAGES

CHAT = [{"content": "Hi", "role": "user"}, {"content": "Hello!", "role": "assistant"}]
# The shapes of LLaMA-Factory's data/ demos, a row or two each.
KTO = [{"messages": CHAT, "label": True},
       {"messages": [CHAT[0], {"content": "Go away.", "role": "assistant"}], "label": False}]
MLLM = [{"messages": [{"content": "<image>Who are they?", "role": "user"},
                      {"content": "Two players.", "role": "assistant"}],
         "images": ["mllm_demo_data/1.jpg"]}]
DPO = [{"conversations": [{"from": "human", "value": "Say hi"}],
        "chosen": {"from": "gpt", "value": "Hi!"}, "rejected": {"from": "gpt", "value": "No."}}]
# Axolotl's tests/fixtures/conversation.json: one top-level object holding one chat.
CONVERSATION = {"conversations": [{"from": "human", "value": "how could i do it?"},
                                  {"from": "gpt", "value": "Like this."},
                                  {"from": "human", "value": "and then?"},
                                  {"from": "gpt", "value": "Then that."}]}


def config_for(path: Path, **training) -> cfg.Config:
    return cfg.validate({"dataset": {"path": str(path), "eval_fraction": 0.0},
                         "training": {"max_length": 256, **training}})


def write(path: Path, value) -> Path:
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(demo_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model)


@pytest.mark.parametrize("rows, said, method", [
    (KTO, "this is a KTO dataset (answers labelled good or bad in column 'label')", "kto"),
    (MLLM, "this is a multimodal dataset (column 'images')", None),
    (DPO, "this is a preference dataset (a chosen and a rejected answer in each row)", "dpo"),
])
def test_data_sft_would_misread_is_refused_by_name_before_launch(tmp_path, rows, said, method):
    path = write(tmp_path / "demo.json", rows)
    with pytest.raises(LoradeckError) as info:
        dataset_prep.check_dataset(config_for(path))
    line = info.value.line()
    assert line.startswith(f"{path}: {said}") and "\n" not in line
    if method:
        assert f"training.method {method}" in line
    assert said in dataset_files.preview(str(path)).errors[0]  # the Data screen says the same


def test_a_boolean_label_marks_kto_but_a_class_number_does_not(tmp_path):
    path = write(tmp_path / "classes.json", [{"text": "good film", "label": 1}])
    assert dataset_prep.check_dataset(config_for(path)).format == "text"


def test_one_conversation_object_is_one_row(tmp_path):
    path = write(tmp_path / "conversation.json", CONVERSATION)
    loaded = dataset_prep.check_dataset(config_for(path))
    assert loaded.format == "messages" and loaded.total_rows == 1
    assert [m["role"] for m in loaded.examples[0]["messages"]] == ["user", "assistant"] * 2


def rows_with_long_prompts(tmp_path: Path) -> Path:
    short = {"instruction": "Hi", "response": "Hello."}
    long_answer = {"instruction": "Repeat this.", "response": "The quick brown fox. " * 3000}
    long_prompt = {"instruction": "Read this. " * 200, "response": "Done."}
    rows = [short, long_prompt, long_answer, short, long_prompt, short]
    path = tmp_path / "mix.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_long_rows_are_cut_or_dropped_and_counted_the_same_everywhere(tmp_path, tok):
    from loradeck.tui.screens.data import render_dataset

    path = rows_with_long_prompts(tmp_path)
    config = config_for(path, max_length=64)
    dataset_prep.check_dataset(config)  # a 63,000-character answer is not refused: it is cut
    prepared = dataset_prep.prepare(config, tok)
    stats = prepared.stats
    assert (stats["kept_rows"], stats["truncated_rows"], stats["dropped_rows"]) == (4, 1, 2)
    assert stats["first_dropped"] == f"{path}:2" and stats["train_rows"] == 4
    assert len(prepared.train) == 4 and all(any(m) for m in prepared.train["assistant_masks"])
    line = "4 rows kept, 1 cut to max length 64; 2 dropped: their prompt fills it " \
           f"(first: {path}:2)"
    assert stats["lengths_line"] == line
    shown = render_dataset(config, tokenizer=tok)
    assert shown.lengths.line() == line and shown.train_rows == 4


def test_nothing_left_is_refused_with_the_length_that_would_keep_rows(tmp_path, tok):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"instruction": "Read this. " * 200, "response": "Ok."}) + "\n",
                    encoding="utf-8")
    with pytest.raises(LoradeckError) as info:
        dataset_prep.prepare(config_for(path, max_length=64), tok)
    assert "in every row (1) the prompt alone fills training.max_length=64" in str(info.value)
    assert "raise training.max_length above" in info.value.line()


def test_a_template_that_drops_tool_calls_is_refused_before_any_model_loads(tmp_path, tok):
    row = {"messages": TOOL_CALL_MESSAGES}
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n" + json.dumps(row) + "\n",
                    encoding="utf-8")
    config = config_for(path)
    loaded = dataset_prep.check_dataset(config)
    with pytest.raises(LoradeckError) as info:
        dataset_prep.check_template(config, loaded, tok)
    assert "drops the assistant's tool calls" in info.value.message
    assert info.value.where == f"{path}:2"
    chatml = cfg.validate({**config.model_dump(), "dataset": {
        **config.dataset.model_dump(), "template": "chatml"}})
    dataset_prep.check_template(chatml, loaded, tok)  # this template writes them
