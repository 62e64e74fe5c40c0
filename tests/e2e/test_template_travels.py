"""The template a run trains with is the template its adapter, merged model and pushed model
carry, in chat_template.jinja and in tokenizer_config.json; a model is refused before launch
when it is nowhere to be found."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loradeck.engine.data import templates
from loradeck.engine.runs.store import RunStore
from tests.conftest import run_cli
from tests.helpers.jobs import JOB_ENV

TINY = ["--set", "training.max_steps=2", "--set", "training.save_steps=2",
        "--set", "training.eval_steps=2", "--set", "training.logging_steps=1"]


def _carried(directory: Path) -> tuple[str, str]:
    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    return (directory / "chat_template.jinja").read_text(encoding="utf-8"), config["chat_template"]


@pytest.fixture
def bare_base(demo_model: Path, tmp_path: Path) -> Path:
    """demo:tiny's files with no chat template of their own."""
    base = tmp_path / "bare-base"
    shutil.copytree(demo_model, base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    config_path = base / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config), encoding="utf-8")
    return base


@pytest.mark.parametrize("template", ["tokenizer", "chatml", "mistral", "alpaca", "bare"])
def test_save_tokenizer_writes_the_template_into_both_files(demo_model, bare_base, tmp_path,
                                                             template):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bare_base if template == "bare" else demo_model)
    own = tok.chat_template
    name = templates.install(tok, "auto" if template in ("tokenizer", "bare") else template)
    expected = own if template == "tokenizer" else templates.NAMED[name]
    assert name == ("tokenizer" if template == "tokenizer" else
                    "chatml" if template == "bare" else template)
    templates.save_tokenizer(tok, tmp_path / "out")
    assert _carried(tmp_path / "out") == (expected, expected)
    again = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert again.chat_template == expected


@pytest.mark.slow
def test_a_run_merge_and_chat_carry_the_template_it_trained_with(demo_model, bare_base):
    """A base with no template, trained with mistral: the adapter and the merged model carry
    mistral, and the chat worker prompts with it as training did."""
    r = run_cli(["train", "demo", "--set", f"model.name={bare_base}",
                 "--set", "dataset.template=mistral", *TINY], env=JOB_ENV, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    run = RunStore().list()[-1]
    assert _carried(run.adapter_dir) == (templates.MISTRAL, templates.MISTRAL)
    r = run_cli(["merge", run.id], env=JOB_ENV, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _carried(run.merged_dir) == (templates.MISTRAL, templates.MISTRAL)

    from transformers import AutoTokenizer

    from loradeck.engine.serve.worker import ChatModel

    worker = ChatModel({"model": str(bare_base), "adapter": str(run.adapter_dir)})
    messages = [{"role": "user", "content": "Hi"}]
    trained = templates.render({"messages": [*messages, {"role": "assistant", "content": "Yo"}]},
                               AutoTokenizer.from_pretrained(bare_base), "mistral")[0]
    assert worker.prompt_text(messages) == trained
    assert "[INST] Hi [/INST]" in trained


def test_a_base_with_no_template_is_chatted_with_as_a_run_on_it_would_be(bare_base):
    """Not the old "User: ..." fallback: the template training would pick for it."""
    from loradeck.engine.serve.worker import ChatModel

    worker = ChatModel({"model": str(bare_base)})
    assert worker.info["chat_template"] is False
    assert worker.prompt_text([{"role": "user", "content": "Hi"}]) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_a_missing_model_is_refused_before_detach_returns(loradeck_home):
    r = run_cli(["train", "demo", "--set", "model.name=someorg/not-a-model", "--detach"],
                env=JOB_ENV, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr  # a network error's status, from the CLI
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "someorg/not-a-model" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (loradeck_home / "runs").exists() or not any((loradeck_home / "runs").iterdir())


def test_a_missing_gguf_file_is_refused_in_one_line(tmp_path, loradeck_home):
    r = run_cli(["train", "demo", "--set", f"model.name={tmp_path / 'nope.gguf'}", "--detach"],
                env=JOB_ENV, timeout=120)
    assert r.returncode == 2 and "GGUF file not found" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_reply_stops_at_the_templates_end_of_turn_even_when_eos_differs(demo_model):
    """chatml's <|im_end|> ends a reply for a tokenizer whose eos is another token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_model)
    tok.eos_token = "<|endoftext|>"
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end != tok.eos_token_id
    assert templates.end_of_turn_ids(tok, "chatml") == {im_end}
    assert templates.end_of_turn_ids(tok, "alpaca") == {tok.eos_token_id}


def test_generation_uses_the_models_own_defaults_unless_the_user_sets_one(demo_model, tmp_path):
    from transformers import GenerationConfig

    from loradeck.engine.serve import params as chat_params
    from loradeck.engine.serve.worker import ChatModel

    base = tmp_path / "with-defaults"
    shutil.copytree(demo_model, base)
    GenerationConfig(do_sample=True, temperature=0.3, top_k=20, repetition_penalty=1.3,
                     eos_token_id=2).save_pretrained(base)
    worker = ChatModel({"model": str(base)})
    assert worker.info["generation_defaults"] == {"temperature": 0.3, "top_k": 20,
                                                  "repetition_penalty": 1.3}
    used = chat_params.check({}, worker.param_defaults)
    assert (used["temperature"], used["top_k"], used["repetition_penalty"]) == (0.3, 20, 1.3)
    assert used["top_p"] == chat_params.default("top_p")  # the model does not set it
    mine = chat_params.check({"temperature": 0.9}, worker.param_defaults)
    assert mine["temperature"] == 0.9 and mine["top_k"] == 20
    greedy = GenerationConfig(do_sample=False)
    assert chat_params.from_generation_config(greedy) == {"temperature": 0.0}
