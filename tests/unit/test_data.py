"""The dataset layer: reading every file type, shape detection, bad data, templates, prep."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from loradeck.engine import config as cfg
from loradeck.engine.data import demo_rows as demo_data
from loradeck.engine.data import files as dataset_files
from loradeck.engine.data import prep as dataset_prep
from loradeck.engine.data import readers, templates
from loradeck.engine.errors import LoradeckError
from tests.helpers.data_rows import TOOL_CALL_MESSAGES, TOOLS

ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------- helpers


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def write_json(path: Path, rows: list[dict], wrap: bool = False) -> Path:
    data = {"data": rows} if wrap else rows
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    columns = list(rows[0])
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v
                             for k, v in row.items()})
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


WRITERS = {"jsonl": write_jsonl, "json": write_json, "csv": write_csv, "parquet": write_parquet}


def config_for(path: Path | str, **sections) -> cfg.Config:
    data = {"dataset": {"path": str(path), **sections.pop("dataset", {})},
            "training": {"max_length": 256, **sections.pop("training", {})}}
    return cfg.validate(data)


def data_error(fn, *args, **kwargs) -> LoradeckError:
    with pytest.raises(LoradeckError) as info:
        fn(*args, **kwargs)
    assert info.value.kind == "data", info.value.line()
    return info.value


@pytest.fixture(scope="module")
def tok(demo_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model)


@pytest.fixture(scope="module")
def bare_tok(demo_model):
    """The demo tokenizer with its chat template removed."""
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(demo_model)
    t.chat_template = None
    return t


# ---------------------------------------------------------------- shapes x file types

DOLLY = [
    {"instruction": "What is the capital of Japan?", "context": "", "response": "Tokyo.",
     "category": "open_qa"},
    {"instruction": "한국의 수도는 어디인가요?", "context": "한국은 동아시아에 있습니다.",
     "response": "서울입니다.", "category": "closed_qa"},
]
ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hi.", "input": "", "output": "Hi!"},
]
MESSAGES = [
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Capital of Korea?"},
                  {"role": "assistant", "content": "서울."}]},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                  {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]},
]
SHAREGPT = [
    {"conversations": [{"from": "human", "value": "Capital of Korea?"},
                       {"from": "gpt", "value": "Seoul."},
                       {"from": "human", "value": "Thanks"}]},
    {"conversations": [{"from": "system", "value": "Be kind."},
                       {"from": "human", "value": "안녕?"}, {"from": "gpt", "value": "안녕하세요!"}]},
]
PROMPT_COMPLETION = [
    {"prompt": "The sky is", "completion": " blue."},
    {"prompt": "하늘은", "completion": " 파랗다."},
]
TEXT = [{"text": "A first document."}, {"text": "두 번째 문서입니다."}]

SHAPES = {
    "dolly": (DOLLY, "instruction",
              {"instruction": "instruction", "context": "context", "response": "response"}),
    "alpaca": (ALPACA, "instruction",
               {"instruction": "instruction", "context": "input", "response": "output"}),
    "messages": (MESSAGES, "messages", {"messages": "messages"}),
    "sharegpt": (SHAREGPT, "messages", {"messages": "conversations"}),
    "prompt-completion": (PROMPT_COMPLETION, "prompt-completion",
                          {"prompt": "prompt", "completion": "completion"}),
    "text": (TEXT, "text", {"text": "text"}),
}

EXPECTED_FIRST = {
    "dolly": [{"role": "user", "content": "What is the capital of Japan?"},
              {"role": "assistant", "content": "Tokyo."}],
    "alpaca": [{"role": "user", "content": "Add the numbers.\n\n2 and 3"},
               {"role": "assistant", "content": "5"}],
    "messages": MESSAGES[0]["messages"],
    # the trailing user turn has nothing to learn from and is dropped
    "sharegpt": [{"role": "user", "content": "Capital of Korea?"},
                 {"role": "assistant", "content": "Seoul."}],
}

CASES = [(shape, ext) for shape in SHAPES for ext in WRITERS]


def _role_content(messages: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


@pytest.mark.parametrize("shape,ext", CASES, ids=[f"{s}-{e}" for s, e in CASES])
def test_each_shape_from_each_file_type(tmp_path, shape, ext):
    rows, expected_format, expected_columns = SHAPES[shape]
    path = WRITERS[ext](tmp_path / f"data.{ext}", rows)
    loaded = dataset_files.load(str(path))
    assert loaded.format == expected_format
    assert loaded.columns == expected_columns
    assert loaded.total_rows == len(rows) == len(loaded.examples)
    first, second = loaded.examples
    if shape in EXPECTED_FIRST:
        assert _role_content(first["messages"]) == EXPECTED_FIRST[shape]
    elif shape == "prompt-completion":
        assert first == {"prompt": "The sky is", "completion": " blue."}
        assert second == {"prompt": "하늘은", "completion": " 파랗다."}
    else:
        assert [first, second] == [{"text": r["text"]} for r in TEXT]
    if shape == "dolly":  # instruction + context become the user message; Korean intact
        assert second["messages"][0]["content"] == "한국의 수도는 어디인가요?\n\n한국은 동아시아에 있습니다."
        assert second["messages"][1]["content"] == "서울입니다."
    if shape == "sharegpt":
        assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant"]


def test_json_with_data_key_and_demo(tmp_path):
    path = write_json(tmp_path / "alpaca.json", ALPACA, wrap=True)
    assert dataset_files.load(str(path)).columns["response"] == "output"
    lines = write_jsonl(tmp_path / "lines.json", DOLLY)  # JSON lines saved as .json
    assert len(dataset_files.load(str(lines)).examples) == 2
    demo = dataset_files.load("demo")
    assert demo.format == "instruction" and demo.total_rows == len(demo_data.ROWS)
    assert demo.wheres[0] == "demo row 1"


def test_txt_lines_and_paragraphs(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("첫 번째 줄입니다.\nSecond line.\n\n", encoding="utf-8")
    assert dataset_files.load(str(lines)).examples == [{"text": "첫 번째 줄입니다."},
                                                        {"text": "Second line."}]
    paras = tmp_path / "paras.txt"
    paras.write_text("Para one,\nstill one.\n\n\nPara two.\n  \nPara 셋.\n", encoding="utf-8")
    loaded = dataset_files.load(str(paras))
    assert loaded.format == "text"
    assert [e["text"] for e in loaded.examples] == ["Para one,\nstill one.", "Para two.",
                                                   "Para 셋."]
    assert loaded.wheres == [f"{paras}:1", f"{paras}:5", f"{paras}:7"]


def test_conversational_prompt_completion_becomes_messages(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "Hi"}],
             "completion": [{"role": "assistant", "content": "Hello"}]}]
    loaded = dataset_files.load(str(write_jsonl(tmp_path / "pc.jsonl", rows)))
    assert loaded.examples == [{"messages": [{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello"}]}]


# ---------------------------------------------------------------- overrides


def test_columns_override_maps_unusual_names(tmp_path):
    rows = [{"q": "Why?", "notes": "because", "a": "Because."}]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    err = data_error(dataset_files.load, str(path))
    assert "unknown dataset shape" in err.message and "q, notes, a" in err.message
    loaded = dataset_files.load(str(path), columns={"instruction": "q", "response": "a",
                                                    "context": "notes"})
    assert loaded.format == "instruction"
    assert loaded.columns == {"instruction": "q", "response": "a", "context": "notes"}
    assert loaded.examples[0]["messages"][0]["content"] == "Why?\n\nbecause"


def test_columns_override_wins_over_detection(tmp_path):
    rows = [{"instruction": "x", "response": "y", "body": "raw text"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    assert dataset_files.load(str(path)).format == "instruction"
    loaded = dataset_files.load(str(path), columns={"text": "body"})
    assert loaded.format == "text" and loaded.examples == [{"text": "raw text"}]


def test_format_forces_shape(tmp_path):
    path = write_jsonl(tmp_path / "pc.jsonl", PROMPT_COMPLETION)
    loaded = dataset_files.load(str(path), format="instruction")
    assert loaded.columns == {"instruction": "prompt", "response": "completion"}
    assert loaded.examples[0]["messages"][1] == {"role": "assistant", "content": " blue."}
    err = data_error(dataset_files.load, str(path), format="text")
    assert "missing column" in err.message and "text" in err.message


def test_override_naming_absent_column(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", DOLLY)
    err = data_error(dataset_files.load, str(path), columns={"response": "answer"})
    assert "response: answer" in err.message
    assert "columns found: instruction, context, response, category" in err.message


def test_system_column_and_prompt(tmp_path, tok):
    rows = [{"system": "Answer in Korean.", "instruction": "Capital of Korea?",
             "response": "서울"}]
    path = write_jsonl(tmp_path / "sys.jsonl", rows)
    loaded = dataset_files.load(str(path))
    assert loaded.columns["system"] == "system"
    assert loaded.examples[0]["messages"][0] == {"role": "system",
                                                 "content": "Answer in Korean."}
    prompt, _ = templates.render({"messages": [{"role": "user", "content": "Hi"},
                                               {"role": "assistant", "content": "Yo"}]},
                                 tok, system_prompt="Be terse.")
    assert prompt.startswith("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi")


# ---------------------------------------------------------------- bad data, located


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(DOLLY[0])
    path.write_text(f"{good}\n\n{good}\n{{\"instruction\": \"oops\",\n{good}\n", encoding="utf-8")
    err = data_error(dataset_files.load, str(path))
    assert err.where == f"{path}:4"
    assert "malformed JSON line" in err.message
    assert err.line().startswith(f"{path}:4: malformed JSON line")
    inspection = dataset_files.preview(str(path))
    assert not inspection.ok and inspection.errors[0].startswith(f"{path}:4:")


def test_bad_json_file_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "a", "response": "b"},\n  {"instruction": }\n]\n',
                    encoding="utf-8")
    err = data_error(dataset_files.load, str(path))
    assert err.where == f"{path}:3" and "not valid JSON" in err.message


def test_missing_columns_lists_found_and_suggests_override(tmp_path):
    path = write_csv(tmp_path / "half.csv", [{"instruction": "a", "context": "b"}])
    err = data_error(dataset_files.load, str(path))
    assert err.where == str(path)
    assert "missing column(s) for the instruction shape (response: response or output" \
        in err.message
    assert "columns found: instruction, context" in err.message
    assert "dataset.columns" in err.hint and "response: <column>" in err.hint


@pytest.mark.parametrize("name,content", [("e.jsonl", ""), ("e.csv", "  \n"), ("e.txt", "\n\n"),
                                          ("e.json", "[]"), ("e.parquet", b"")])
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    err = data_error(dataset_files.load, str(path))
    assert err.where == str(path)
    assert err.message in ("the file is empty", "no rows in the file")


def test_empty_parquet_and_header_only_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq_path = tmp_path / "none.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), pq_path)
    assert data_error(dataset_files.load, str(pq_path)).message == "no rows in the file"
    csv_path = tmp_path / "header.csv"
    csv_path.write_text("instruction,response\n", encoding="utf-8")
    assert data_error(dataset_files.load, str(csv_path)).message == "no rows in the file"


def test_unknown_shape_lists_columns(tmp_path):
    path = write_parquet(tmp_path / "odd.parquet", [{"foo": 1, "bar": "x"}])
    err = data_error(dataset_files.load, str(path))
    assert err.line().startswith(f"{path}: unknown dataset shape; columns found: foo, bar")
    assert "dataset.columns" in err.hint


@pytest.mark.parametrize("ext,where", [("jsonl", "{p}:3"), ("csv", "{p} row 3"),
                                       ("json", "{p} row 3"), ("parquet", "{p} row 3")])
def test_empty_required_field_names_row(tmp_path, ext, where):
    rows = [dict(DOLLY[0]), dict(DOLLY[1]), dict(DOLLY[0], response="")]
    path = WRITERS[ext](tmp_path / f"gap.{ext}", rows)
    err = data_error(dataset_files.load, str(path))
    assert err.where == where.format(p=path)
    assert err.message == "empty response (column 'response')"


def test_none_field_in_json(tmp_path):
    path = write_json(tmp_path / "none.json", [DOLLY[0], dict(DOLLY[0], instruction=None)])
    err = data_error(dataset_files.load, str(path))
    assert err.line().startswith(f"{path} row 2: empty instruction")


def test_bad_chat_rows(tmp_path):
    rows = [MESSAGES[0], {"messages": [{"role": "narrator", "content": "x"}]}]
    path = write_jsonl(tmp_path / "roles.jsonl", rows)
    err = data_error(dataset_files.load, str(path))
    assert err.where == f"{path}:2" and "unknown role 'narrator'" in err.message
    rows = [{"messages": [{"role": "user", "content": "only a question"}]}]
    err = data_error(dataset_files.load, str(write_jsonl(tmp_path / "q.jsonl", rows)))
    assert "no assistant message" in err.message


def test_unsupported_extension_missing_file_and_folder(tmp_path):
    path = tmp_path / "sheet.xlsx"
    path.write_bytes(b"PK\x03\x04")
    err = data_error(dataset_files.load, str(path))
    assert "unsupported file type '.xlsx'" in err.message and ".jsonl" in err.hint
    err = data_error(dataset_files.load, str(tmp_path / "nope.jsonl"))
    assert err.message == "dataset file not found"
    err = data_error(dataset_files.load, str(tmp_path))
    assert "folder" in err.message


def test_not_utf8_names_line(tmp_path):
    path = tmp_path / "cp949.jsonl"
    path.write_bytes(json.dumps(DOLLY[0]).encode() + b"\n" +
                     '{"text": "한국어"}\n'.encode("cp949"))
    err = data_error(dataset_files.load, str(path))
    assert err.where == f"{path}:2" and err.message == "not UTF-8 text"


def test_hub_id_offline_is_a_network_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert readers.is_hub_id("someorg/some-set")
    with pytest.raises(LoradeckError) as info:
        dataset_files.load("someorg/some-set")
    assert info.value.kind == "network" and info.value.where == "someorg/some-set"
    assert "local file" in info.value.hint
    inspection = dataset_files.preview("someorg/some-set")
    assert inspection.kind == "hub" and inspection.error_kind == "network"


def test_every_row_over_max_length(tmp_path, tok):
    rows = [{"instruction": "Tell a long story " * 10, "response": "Once upon a time " * 10}] * 3
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    config = config_for(path, training={"max_length": 16})
    err = data_error(dataset_prep.prepare, config, tok)
    assert err.where == str(path)
    assert err.message.startswith("in every row (3) the prompt alone fills "
                                  "training.max_length=16 tokens")
    assert "raise training.max_length above" in err.hint


def test_check_dataset_fails_before_any_model(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "response": "b"}\nnot json\n', encoding="utf-8")
    err = data_error(dataset_prep.check_dataset, config_for(path))
    assert err.where == f"{path}:2"
    ok = dataset_prep.check_dataset(cfg.demo_config())
    assert ok.format == "instruction" and ok.total_rows == len(demo_data.ROWS)


# ---------------------------------------------------------------- inspect


def test_inspect_for_the_data_screen(tmp_path):
    rows = [dict(DOLLY[i % 2], instruction=f"{DOLLY[i % 2]['instruction']} {i}")
            for i in range(30)]
    rows[7]["response"] = ""
    rows[12]["instruction"] = None
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    info = dataset_files.preview(str(path), limit=5)
    assert info.file == str(path) and info.kind == "file" and info.format == "instruction"
    assert info.total_rows == 30 and len(info.rows) == 5 and len(info.examples) == 5
    assert info.found_columns == ["instruction", "context", "response", "category"]
    assert info.errors == [f"{path}:8: empty response (column 'response') "
                           "(fill it in or remove the row)",
                           f"{path}:13: empty instruction (column 'instruction') "
                           "(fill it in or remove the row)"]
    headers, cells = info.table(width=12)
    assert headers == info.found_columns and len(cells) == 5
    assert cells[0][0] == "What is the…" and cells[1][2] == "서울입니다."
    forced = dataset_files.preview(str(path), columns={"text": "instruction"})
    assert forced.format == "text" and forced.errors == [
        f"{path}:13: empty text (column 'instruction') (fill it in or remove the row)"]


# ---------------------------------------------------------------- templates


def texts_of(tok, record) -> tuple[str, str]:
    """A prepared record as (its whole text, the text of its trained tokens)."""
    ids, mask = record["input_ids"], record["assistant_masks"]
    return (tok.decode(ids, skip_special_tokens=False),
            tok.decode([i for i, m in zip(ids, mask, strict=True) if m]))


def test_render_with_the_tokenizers_chat_template(tok):
    example = {"messages": MESSAGES[1]["messages"]}
    prompt, completion = templates.render(example, tok)
    assert templates.resolve(tok) == "tokenizer"
    assert prompt == tok.apply_chat_template(example["messages"][:-1], tokenize=False,
                                             add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
    assert completion == "Bye!<|im_end|>"
    # exactly one eos at the end: TRL adds its own only when the completion lacks it
    assert completion.endswith(tok.eos_token) and not completion.endswith(tok.eos_token * 2)
    assert templates.render({"prompt": "The sky is", "completion": " blue."}, tok) == \
        ("The sky is", " blue.<|im_end|>")
    assert templates.Renderer(tok).text("plain") == "plain<|im_end|>"
    assert templates.render_prompt([{"role": "user", "content": "Hi"}], tok) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_named_templates_for_a_tokenizer_without_one(bare_tok):
    example = dataset_files.normalize_row(
        {"instruction": "Add.", "input": "2 and 3", "output": "5"}, "instruction",
        {"instruction": "instruction", "context": "input", "response": "output"}, "x")
    eos = bare_tok.eos_token
    assert templates.resolve(bare_tok) == "chatml"  # <|im_start|> is in its vocabulary
    with pytest.raises(ValueError):
        bare_tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)

    assert templates.render(example, bare_tok, "chatml") == (
        "<|im_start|>user\nAdd.\n\n2 and 3<|im_end|>\n<|im_start|>assistant\n", f"5{eos}")
    assert templates.render(example, bare_tok, "mistral", system_prompt="Sys.") == (
        f"{bare_tok.bos_token}[INST] Sys.\n\nAdd.\n\n2 and 3 [/INST]", f" 5{eos}")
    assert templates.render(example, bare_tok, "alpaca") == (
        "### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:\n", f"5{eos}")
    multi = {"messages": MESSAGES[1]["messages"]}
    assert templates.render(multi, bare_tok, "alpaca") == (
        f"### Instruction:\nHi\n\n### Response:\nHello{eos}\n\n### Instruction:\nBye\n\n"
        "### Response:\n", f"Bye!{eos}")
    assert templates.render_prompt([{"role": "user", "content": "Hi"}], bare_tok, "mistral") == \
        f"{bare_tok.bos_token}[INST] Hi [/INST]"
    with pytest.raises(LoradeckError):
        templates.Renderer(bare_tok, "vicuna")


def test_install_puts_the_template_in_the_tokenizer(demo_model):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(demo_model)
    t.chat_template = None
    assert templates.install(t, "alpaca") == "alpaca"
    text = t.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                 add_generation_prompt=True)
    assert text == "### Instruction:\nHi\n\n### Response:\n"


def test_korean_survives_render_tokenize_decode(tmp_path, tok):
    rows = [{"instruction": "한국의 수도는 어디인가요?", "context": "", "response": "서울입니다."}
            for _ in range(3)]
    path = write_csv(tmp_path / "ko.csv", rows)
    prepared = dataset_prep.prepare(config_for(path, dataset={"eval_fraction": 0.0}), tok)
    full, trained = texts_of(tok, prepared.train[0])
    assert "한국의 수도는 어디인가요?" in full and full.endswith("서울입니다.<|im_end|>")
    assert trained == "서울입니다.<|im_end|>"
    assert "서울입니다" in prepared.stats["sample"]


# ---------------------------------------------------------------- prepare


def test_prepare_counts_truncated_rows(tmp_path, tok):
    short = {"instruction": "Hi", "response": "Hello."}
    long = {"instruction": "Repeat this.", "response": "The quick brown fox. " * 20}
    rows = [short, long, short, long, short]
    path = write_jsonl(tmp_path / "mix.jsonl", rows)
    config = config_for(path, training={"max_length": 48}, dataset={"eval_fraction": 0.0})
    prepared = dataset_prep.prepare(config, tok)
    lengths = [len(r["input_ids"]) for r in prepared.train]
    assert sorted(lengths)[-1] > 48 >= sorted(lengths)[2]
    stats = prepared.stats
    assert stats["truncated_rows"] == 2 and stats["rows"] == 5
    assert stats["max_tokens"] == max(lengths)
    assert stats["mean_tokens"] == round(sum(lengths) / 5, 1)
    assert stats["template"] == "tokenizer" and stats["format"] == "instruction"
    assert prepared.eval is None and stats["eval_rows"] == 0


def test_prepare_demo_split_is_deterministic(tok):
    config = cfg.demo_config()
    a = dataset_prep.prepare(config, tok)
    b = dataset_prep.prepare(config, tok)
    n = len(demo_data.ROWS)
    assert a.stats["rows"] == n and a.stats["eval_rows"] == round(n * 0.1)
    assert a.stats["train_rows"] + a.stats["eval_rows"] == n
    assert len(a.train) == a.stats["train_rows"] and len(a.eval) == a.stats["eval_rows"]
    assert a.train.column_names == ["input_ids", "assistant_masks"]
    assert a.eval["input_ids"] == b.eval["input_ids"] and a.train["input_ids"] == b.train["input_ids"]
    other = dataset_prep.prepare(config.model_copy(update={"training": config.training.model_copy(
        update={"seed": 7})}), tok)
    assert other.eval["input_ids"] != a.eval["input_ids"]
    assert a.stats["columns"] == {"instruction": "instruction", "context": "context",
                                  "response": "response"}
    assert a.stats["truncated_rows"] == 0


def test_split_rules():
    assert dataset_prep.split_indices(100, 0.1, 42) == dataset_prep.split_indices(100, 0.1, 42)
    train, ev = dataset_prep.split_indices(100, 0.1, 42)
    assert len(ev) == 10 and len(train) == 90 and not set(train) & set(ev)
    assert dataset_prep.split_indices(100, 0.0, 42) == (list(range(100)), [])
    assert dataset_prep.split_indices(3, 0.1, 42) == ([0, 1, 2], [])   # too few rows
    assert len(dataset_prep.split_indices(12, 0.01, 42)[1]) == 1


def test_prepare_text_max_rows_and_small_sets(tmp_path, tok):
    path = tmp_path / "notes.txt"
    path.write_text("\n".join(f"노트 {i}: the quick brown fox." for i in range(20)) + "\n",
                    encoding="utf-8")
    config = config_for(path, dataset={"max_rows": 12, "eval_fraction": 0.25})
    prepared = dataset_prep.prepare(config, tok)
    assert prepared.train.column_names == ["input_ids", "assistant_masks"]
    assert prepared.stats["total_rows"] == 20 and prepared.stats["rows"] == 12
    assert (prepared.stats["train_rows"], prepared.stats["eval_rows"]) == (9, 3)
    for record in prepared.train:
        full, trained = texts_of(tok, record)
        assert full == trained and full.endswith("<|im_end|>") and full.startswith("노트")
    assert prepared.stats["format"] == "text"
    tiny = dataset_prep.prepare(config_for(path, dataset={"max_rows": 2}), tok)
    assert tiny.eval is None and tiny.stats["train_rows"] == 2


def trl_prepared(tmp_path, demo_model, tok, dataset):
    """``dataset`` as TRL's SFTTrainer prepares it for training (labels built)."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(demo_model)
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_length=256, report_to=[], use_cpu=True,
                     dataset_num_proc=None)
    return SFTTrainer(model=model, args=args, train_dataset=dataset,
                      processing_class=tok).train_dataset


def test_trl_tokenizes_prepared_rows_with_one_eos_and_completion_mask(tmp_path, demo_model, tok):
    """The real SFTTrainer preparation: no second eos, loss only on the response."""
    prepared = dataset_prep.prepare(cfg.demo_config(), tok)
    row = trl_prepared(tmp_path, demo_model, tok, prepared.train)[0]
    source = prepared.train[0]
    ids = row["input_ids"]
    assert ids == source["input_ids"]
    assert ids[-1] == tok.eos_token_id and ids[-2] != tok.eos_token_id
    n_prompt = source["assistant_masks"].index(1)
    assert row["labels"] == [-100] * n_prompt + ids[n_prompt:]
    assert tok.decode(ids[:n_prompt]).endswith("<|im_start|>assistant\n")


def test_every_assistant_turn_of_a_conversation_is_trained(tmp_path, demo_model, tok):
    """A 3-turn ShareGPT row: TRL's labels cover exactly the three assistant replies (each
    with its end-of-turn token), and nothing of the system, user or role-header text."""
    turns = [("사과는 무슨 색?", "빨간색입니다."), ("바나나는?", "노란색입니다."),
             ("And grapes?", "Purple, mostly.")]
    row = {"conversations": [{"from": "system", "value": "Answer briefly."}]}
    for question, answer in turns:
        row["conversations"] += [{"from": "human", "value": question},
                                 {"from": "gpt", "value": answer}]
    path = write_jsonl(tmp_path / "chat.jsonl", [row] * 3)
    prepared = dataset_prep.prepare(config_for(path, dataset={"eval_fraction": 0.0}), tok)
    example = trl_prepared(tmp_path, demo_model, tok, prepared.train)[0]
    ids, labels = example["input_ids"], example["labels"]
    spans, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != -100:
            current.append(token)
        elif current:
            spans.append(tok.decode(current))
            current = []
    if current:
        spans.append(tok.decode(current))
    assert spans == [f"{answer}<|im_end|>" for _, answer in turns]
    assert all(label in (-100, token) for token, label in zip(ids, labels, strict=True))


def test_eos_and_bos_of_other_tokenizers(demo_model):
    """A tokenizer whose eos is not the chatml end marker and that adds its own BOS."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(demo_model)
    t.chat_template = None
    t.eos_token = "<|endoftext|>"
    bos_id = t.convert_tokens_to_ids("<|endoftext|>")
    t.bos_token = "<|endoftext|>"
    t.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos_id)])
    assert t("a")["input_ids"][0] == bos_id
    example = {"messages": [{"role": "user", "content": "질문"},
                            {"role": "assistant", "content": "답"}]}
    prompt, completion = templates.render(example, t, "chatml")
    assert completion == "답<|im_end|><|endoftext|>"  # end marker, then the tokenizer's eos
    prompt, completion = templates.render(example, t, "mistral")
    assert (prompt, completion) == ("[INST] 질문 [/INST]", " 답<|endoftext|>")
    ids = t(prompt + completion)["input_ids"]
    assert ids.count(bos_id) == 2 and ids[0] == bos_id and ids[-1] == bos_id  # one BOS, one EOS


# ---------------------------------------------------------------- shapes people publish

def _labelled_spans(tok, record) -> list[str]:
    spans, current = [], []
    for token, trained in zip(record["input_ids"], record["assistant_masks"], strict=True):
        if trained:
            current.append(token)
        elif current:
            spans.append(tok.decode(current))
            current = []
    return spans + ([tok.decode(current)] if current else [])


@pytest.mark.parametrize("shape", ["sharegpt", "openai"])
def test_tool_calling_conversations_train_the_calls_and_the_answer(tmp_path, tok, shape):
    if shape == "sharegpt":
        row = {"conversations": [
            {"from": "human", "value": "Weather in Seoul?"},
            {"from": "function_call",
             "value": json.dumps({"name": "get_weather", "arguments": {"city": "Seoul"}})},
            {"from": "observation", "value": "{\"sky\": \"clear\"}"},
            {"from": "gpt", "value": "It is clear in Seoul."}], "tools": json.dumps(TOOLS)}
    else:
        row = {"messages": TOOL_CALL_MESSAGES, "tools": TOOLS}
    path = write_jsonl(tmp_path / "tools.jsonl", [row] * 3)
    config = config_for(path, training={"max_length": 1024},
                        dataset={"eval_fraction": 0.0, "template": "chatml"})
    prepared = dataset_prep.prepare(config, tok)
    record = prepared.train[0]
    full = tok.decode(record["input_ids"])
    assert "<tools>" in full and '"name": "get_weather"' in full  # the schemas, via the template
    assert "<|im_start|>tool\n{\"sky\": \"clear\"}<|im_end|>" in full
    assert _labelled_spans(tok, record) == [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Seoul"}}</tool_call>'
        "<|im_end|>", "It is clear in Seoul.<|im_end|>"]
    # a template that cannot write tool calls is refused in one line, not trained silently
    plain = config_for(path, training={"max_length": 1024},  # demo's own template: no tools
                       dataset={"eval_fraction": 0.0})
    with pytest.raises(LoradeckError) as info:
        dataset_prep.prepare(plain, tok)
    assert "drops the assistant's tool calls" in info.value.line()
    assert info.value.where.endswith("tools.jsonl:1")


def test_content_parts_with_text_or_value_are_read_and_images_refused(tmp_path, tok):
    row = {"messages": [
        {"role": "user", "content": [{"type": "text", "value": "Hello "},
                                     {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": [{"type": "text", "value": "Hi!"}]}]}
    path = write_jsonl(tmp_path / "parts.jsonl", [row] * 2)
    prepared = dataset_prep.prepare(config_for(path, dataset={"eval_fraction": 0.0}), tok)
    full, trained = texts_of(tok, prepared.train[0])
    assert "Hello there" in full and trained == "Hi!<|im_end|>"
    image = {"messages": [{"role": "user", "content": [{"type": "image", "url": "x.png"},
                                                       {"type": "text", "text": "What?"}]},
                          {"role": "assistant", "content": "A cat."}]}
    bad = write_jsonl(tmp_path / "image.jsonl", [image])
    with pytest.raises(LoradeckError) as info:
        dataset_files.load_section(config_for(bad).dataset)
    assert "a image part in a message: only text is trained" in info.value.line()
    assert info.value.where == f"{bad}:1"


def test_long_plain_text_is_cut_into_max_length_blocks_not_refused(tmp_path, tok):
    article = " ".join(f"Sentence {i} of a long article about the sea." for i in range(400))
    path = tmp_path / "articles.jsonl"
    path.write_text(json.dumps({"text": article}) + "\n" + json.dumps({"text": "Short."}) + "\n",
                    encoding="utf-8")
    config = config_for(path, training={"max_length": 64}, dataset={"eval_fraction": 0.0})
    dataset_prep.check_dataset(config)  # before launch: not refused
    prepared = dataset_prep.prepare(config, tok)
    lengths = [len(ids) for ids in prepared.train["input_ids"]]
    assert prepared.stats["cut_rows"] == 1 and prepared.stats["rows"] == 2
    assert max(lengths) == 64 and len(lengths) > 20
    joined = [i for ids in prepared.train["input_ids"][:-1] for i in ids]
    assert tok.decode(joined).startswith("Sentence 0 of a long article")
    assert all(all(m) for m in prepared.train["assistant_masks"])
