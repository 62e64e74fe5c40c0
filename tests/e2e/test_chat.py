"""The chat worker process, its clients, chat targets and ``loradeck chat`` on demo:tiny."""

from __future__ import annotations

import asyncio
import time

import pytest

from loradeck.engine.enums import FinishReason
from loradeck.engine.errors import LoradeckError
from loradeck.engine.serve.client import AsyncChatClient, ChatClient
from loradeck.engine.serve.replies import Failed, Finished, Token
from loradeck.engine.serve.target import resolve
from tests.conftest import run_cli
from tests.helpers.run_fixtures import make_finished_run

GREEDY = {"temperature": 0, "max_new_tokens": 20, "repetition_penalty": 1.0}
HELLO = [{"role": "user", "content": "Hello, who are you?"}]


@pytest.fixture(scope="module")
def finished_run(demo_model, tmp_path_factory):
    return make_finished_run(root=tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def worker(finished_run):
    """One worker for the module: demo:tiny + the run's adapter, loaded once."""
    client = ChatClient()
    client.start("demo:tiny", adapter=finished_run.adapter_dir)
    yield client
    client.close()
    assert not [ln for ln in client.stderr_tail if ln.startswith("(stdout)")], \
        "the worker wrote something other than replies to stdout"


@pytest.fixture(scope="module")
def base_lm(demo_model):
    """demo:tiny and its tokenizer loaded in this process with plain transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(demo_model), AutoTokenizer.from_pretrained(
        demo_model)


def base_greedy(base_lm, messages, max_new_tokens=20) -> tuple[str, int]:
    """Greedy reply of the plain base model to ``messages`` (chat template) and prompt length."""
    import torch

    model, tok = base_lm
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id)
    n = enc["input_ids"].shape[1]
    return tok.decode(out[0, n:], skip_special_tokens=True), n


def collect(stream) -> tuple[list[Token], Finished]:
    replies = list(stream)
    return replies[:-1], replies[-1]


def test_loaded_info_names_model_and_adapter(worker):
    info = worker.info
    assert info["name"] == "demo:tiny"
    assert info["adapter"] is True and info["device"] == "cpu"
    assert info["parameters"] > 500_000 and info["chat_template"] is True


def test_reply_streams_tokens_then_done_with_speed(worker):
    tokens, done = collect(worker.generate(HELLO, GREEDY))
    assert len(tokens) >= 3 and all(isinstance(r, Token) for r in tokens)
    assert isinstance(done, Finished) and done.finish_reason in (FinishReason.LENGTH,
                                                             FinishReason.STOP)
    assert "".join(r.text for r in tokens) == done.text
    assert done.tokens == 20 or done.finish_reason == FinishReason.STOP
    assert done.ttft_s > 0 and done.tokens_per_second > 0


def test_cancel_stops_a_long_reply_quickly(worker):
    stream = worker.generate(HELLO, {**GREEDY, "max_new_tokens": 2000}, adapter=False)
    first = next(stream)
    assert isinstance(first, Token)
    stream.cancel()
    rest = list(stream)
    done = rest[-1]
    assert isinstance(done, Finished) and done.stopped
    assert done.tokens < 2000
    # the worker goes on serving
    _, again = collect(worker.generate(HELLO, {**GREEDY, "max_new_tokens": 3}))
    assert isinstance(again, Finished) and again.tokens == 3


def test_adapter_toggles_without_reload_and_off_is_the_base(worker, base_lm):
    pid = worker.proc.pid
    _, with_adapter = collect(worker.generate(HELLO, GREEDY, adapter=True))
    _, without = collect(worker.generate(HELLO, GREEDY, adapter=False))
    _, with_again = collect(worker.generate(HELLO, GREEDY, adapter=True))
    assert worker.proc.pid == pid
    assert with_adapter.adapter is True and without.adapter is False
    assert with_adapter.text != without.text
    assert with_again.text == with_adapter.text
    assert without.text == base_greedy(base_lm, HELLO)[0]


def test_bad_requests_come_back_as_errors_and_the_worker_survives(worker):
    for params, needle in (({"temperature": -1}, "temperature"), ({"top_p": 2}, "top_p"),
                           ({"max_new_tokens": 0}, "max_new_tokens"),
                           ({"temprature": 0.5}, "unknown param")):
        replies = list(worker.generate(HELLO, params))
        assert len(replies) == 1 and isinstance(replies[0], Failed), params
        assert replies[0].kind == "params" and needle in replies[0].message
    bad_messages = list(worker.generate([{"role": "robot", "content": "x"}], GREEDY))
    assert isinstance(bad_messages[0], Failed) and bad_messages[0].kind == "request"
    worker.send({"type": "dance", "id": "x1"})
    _, done = collect(worker.generate(HELLO, {**GREEDY, "max_new_tokens": 4}))
    assert isinstance(done, Finished) and done.tokens == 4


def test_multi_turn_with_system_prompt_goes_through_the_template(worker, base_lm):
    chat = [{"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "What is the capital of Korea?"},
            {"role": "assistant", "content": "Seoul."},
            {"role": "user", "content": "And of Egypt?"}]
    _, done = collect(worker.generate(chat, GREEDY, adapter=False))
    text, prompt_len = base_greedy(base_lm, chat)
    assert done.prompt_tokens == prompt_len
    assert done.text == text
    _, last_only = collect(worker.generate(chat[-1:], GREEDY, adapter=False))
    assert last_only.prompt_tokens < prompt_len


def test_korean_prompt_round_trip(worker, base_lm):
    chat = [{"role": "user", "content": "한국의 수도는 어디인가요? 짧게 답해 주세요."}]
    tokens, done = collect(worker.generate(chat, GREEDY, adapter=False))
    text, prompt_len = base_greedy(base_lm, chat)
    assert done.prompt_tokens == prompt_len
    assert done.text == text == "".join(r.text for r in tokens)


def test_async_client_streams_and_cancels(finished_run):
    async def main():
        client = AsyncChatClient()
        try:
            info = await client.start("demo:tiny", adapter=str(finished_run.adapter_dir))
            assert info["adapter"] is True
            replies = [r async for r in client.generate(HELLO, {**GREEDY, "max_new_tokens": 6})]
            assert isinstance(replies[-1], Finished) and replies[-1].tokens == 6
            assert any(isinstance(r, Token) for r in replies)
            seen = []
            async for r in client.generate(HELLO, {**GREEDY, "max_new_tokens": 2000},
                                           adapter=False, id="long"):
                seen.append(r)
                if len(seen) == 1:
                    await client.cancel("long")
            assert seen[-1].stopped and seen[-1].tokens < 2000
            proc = client.proc
        finally:
            await client.close()
        assert proc.returncode is not None

    asyncio.run(main())


def test_chat_target_resolves_runs_and_models(finished_run):
    t = resolve(str(finished_run.dir))
    assert t.model == "demo:tiny" and t.adapter == str(finished_run.adapter_dir)
    assert t.quantization == "none" and finished_run.id in t.label
    b = resolve(str(finished_run.dir), base=True)
    assert b.model == "demo:tiny" and b.adapter is None
    m = resolve("demo:tiny")
    assert m.model == "demo:tiny" and m.adapter is None
    with pytest.raises(LoradeckError, match="RUN|MODEL"):
        resolve("not a model!")


def test_cli_chat_prompt_prints_one_streamed_reply(finished_run, worker):
    _, expected = collect(worker.generate([{"role": "user", "content": "Hello"}],
                                          {**GREEDY, "max_new_tokens": 12}))
    res = run_cli(["chat", str(finished_run.dir), "--prompt", "Hello", "--temperature", "0",
                   "--max-new-tokens", "12", "--repetition-penalty", "1.0"])
    assert res.returncode == 0, res.stderr
    assert res.stdout == expected.text + "\n"
    assert "ttft" in res.stderr and "tok/s" in res.stderr


def test_worker_exits_when_its_parent_dies(cli_env):
    import os
    import signal
    import subprocess
    import sys

    from loradeck.engine.runs.store import pid_alive

    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom loradeck.engine.serve.client import ChatClient\n"
         "print(ChatClient().spawn(), flush=True)\ntime.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env=cli_env)
    worker_pid = int(parent.stdout.readline())
    assert pid_alive(worker_pid)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while pid_alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(worker_pid)


def test_streamer_keeps_the_leading_space_of_a_line_after_a_newline():
    """The worker streams through transformers' own TextIteratorStreamer: after a newline it
    keeps the last token as context, so a tokenizer that drops a lone token's leading space
    (SentencePiece's Metaspace, as Llama and Mistral use) still streams " b" on the next line."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from loradeck.engine.serve.worker import _make_streamer

    vocab = {"[UNK]": 0, "▁a": 1, "\n": 2, "▁b": 3, "▁c": 4}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    assert tok.decode([3]) == "b" and tok.decode([2, 3]) == "\n b"
    streamer = _make_streamer(tok)
    streamer.put(torch.tensor([[1]]))  # the prompt: skipped
    pieces = []
    streamer.on_finalized_text = lambda text, stream_end=False: pieces.append(text)
    for token in (1, 2, 3, 4):
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert "".join(pieces) == tok.decode([1, 2, 3, 4]) == "a\n b c"
    assert streamer.first_token_at is not None


def test_chat_params_have_one_source():
    """Worker, CLI and Chat screen all take their defaults and checks from ChatParams."""
    from loradeck.engine.serve import params as chat_params
    from loradeck.engine.serve.worker import validate_params
    from loradeck.tui.cli import build_parser
    from loradeck.tui.commands.chat import params_from
    from loradeck.tui.screens.chat import parse_params

    defaults = chat_params.ChatParams().model_dump()
    assert defaults["repetition_penalty"] == 1.1
    assert validate_params({}) == defaults
    args = build_parser().parse_args(["chat", "demo:tiny"])
    assert validate_params(params_from(args)) == defaults
    assert parse_params({}) == defaults
    with pytest.raises(ValueError, match="top_p must be"):
        parse_params({"top_p": "2"})


def test_cli_chat_saves_the_conversation_with_slash_save(finished_run, tmp_path):
    """``/save FILE`` in ``loradeck chat``: Markdown, or a JSONL training row; saving the same
    file again updates it, and a file it did not write is kept."""
    import json

    theirs = tmp_path / "theirs.md"
    theirs.write_text("keep me", encoding="utf-8")
    lines = ["Hello", f"/save {tmp_path / 'chat.md'}", "Bye", f"/save {tmp_path / 'chat.md'}",
             f"/save {tmp_path / 'chat.jsonl'}", f"/save {theirs}", "/quit"]
    res = run_cli(["chat", str(finished_run.dir), "--temperature", "0", "--max-new-tokens", "8"],
                  input="\n".join(lines) + "\n")
    assert res.returncode == 0, res.stderr
    assert f"(saved 2 messages to {tmp_path / 'chat.md'})" in res.stderr
    assert f"(saved 4 messages to {tmp_path / 'chat.md'})" in res.stderr
    assert f"loradeck: {theirs}: the file exists; it was kept (give another name)" in res.stderr
    assert theirs.read_text(encoding="utf-8") == "keep me"
    md = (tmp_path / "chat.md").read_text(encoding="utf-8")
    assert md.startswith(f"# Chat with run {finished_run.id}")
    assert md.count("**You**") == 2 and "Hello" in md and "Bye" in md and "_ttft " in md
    row = json.loads((tmp_path / "chat.jsonl").read_text(encoding="utf-8"))
    assert [m["role"] for m in row["messages"] if m["role"] != "system"] == [
        "user", "assistant", "user", "assistant"]
    assert row["messages"][-2]["content"] == "Bye"
