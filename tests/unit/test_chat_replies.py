"""The chat worker's replies as dataclasses: written and read through one module, their one
figures line, and their errors."""

from __future__ import annotations

import ast
import io
import json

import pytest

from loradeck.engine.enums import FinishReason
from loradeck.engine.serve import replies as protocol
from loradeck.engine.serve.replies import Failed, Finished, ModelLoaded, Token
from tests.conftest import ROOT


@pytest.mark.parametrize("reply", [
    ModelLoaded("load", {"name": "demo:tiny", "adapter": True}),
    Token("g1", "서울"),
    Finished("g1", text="Seoul.", tokens=3, ttft_s=0.2, tokens_per_second=12.5,
         finish_reason=FinishReason.LENGTH, prompt_tokens=9, adapter=True,
         params={"temperature": 0}),
    Failed("g1", "params", "temperature must be >= 0"),
])
def test_each_reply_reads_back_as_the_dataclass_it_was(reply):
    text = protocol.line(reply)
    assert "\n" not in text and json.loads(text)["type"] in protocol.KINDS
    assert protocol.parse(json.loads(text)) == reply


def test_lines_that_are_not_replies_read_as_none_and_extra_fields_are_left_out():
    assert protocol.parse(["token"]) is None
    assert protocol.parse({"type": "dance", "id": "x"}) is None
    assert protocol.parse({"type": "token", "id": "x"}) is None  # no text
    done = protocol.parse({"type": "done", "id": 7, "tokens": 2, "finish_reason": "odd",
                           "from_a_newer_worker": 1})
    assert done == Finished("7", tokens=2)


@pytest.mark.parametrize("done, line", [
    (Finished("a", ttft_s=0.214, tokens_per_second=38.44, tokens=57),
     "ttft 0.21 s · 38.4 tok/s · 57 tokens"),
    (Finished("a", tokens=0, finish_reason=FinishReason.CANCELLED),
     "ttft - · 0.0 tok/s · 0 tokens · stopped"),
    (Finished("a", ttft_s=1, tokens_per_second=3, tokens=8, finish_reason=FinishReason.LENGTH),
     "ttft 1.00 s · 3.0 tok/s · 8 tokens · hit max new tokens"),
])
def test_one_figures_line(done, line):
    assert done.stats() == line
    assert done.stopped is (done.finish_reason == FinishReason.CANCELLED)


def test_failed_replies_become_one_error_each():
    assert Failed("g", "oom", "out of memory").error().kind == "oom"
    assert Failed("g", "params", "bad top_p").error().kind == "usage"
    load = Failed("load", "auth", "gated repo").load_error()
    assert load.kind == "auth" and "did not load: gated repo" in str(load)
    assert Failed("load", "request", "x").load_error().kind == "model"


def test_the_bench_worker_speaks_the_same_dataclasses():
    from bench.stream_worker import StreamWorker

    out = io.StringIO()
    worker = StreamWorker(rate=5000, out=out)
    worker.stream("g1", 3)
    got = [protocol.parse(json.loads(line)) for line in out.getvalue().splitlines()]
    assert [type(r) for r in got] == [Token, Token, Token, Finished]
    assert got[-1].text == "".join(r.text for r in got[:-1]) and got[-1].tokens == 3


CHAT_MODULES = ("engine/serve", "tui/commands/chat.py", "tui/screens/chat.py",
                "tui/widgets/chat_log.py", "bench/stream_worker.py", "bench/gguf_bench.py")


def test_no_reply_is_built_or_read_by_its_type_string_outside_the_replies_module():
    found = []
    for folder in CHAT_MODULES:
        base = ROOT / folder
        for path in [base] if base.suffix else sorted(base.glob("*.py")):
            if path.name in ("replies.py", "api_server.py"):  # api_server: OpenAI's JSON
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in protocol.KINDS:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert found == []
