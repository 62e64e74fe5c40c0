"""demo:tiny: a small Llama-architecture model with a byte-level BPE tokenizer and chat template.

Built locally and deterministically in seconds, with no network, so the app, the tests and the
offline demo have a real model to train, chat with, merge and push. Heavy imports stay inside
functions: this module is safe to import from the app.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from loradeck.engine.runs import paths

DEMO_MODEL = "demo:tiny"
BUILD_VERSION = "2"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

ARCH = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6,
            rope_theta=10000.0, tie_word_embeddings=False, initializer_range=0.02)

VOCAB_SIZE = 1024
# The LM head's weights are drawn wider than the rest (initializer_range): LoRA adapts the
# blocks but leaves the final norm and the head frozen, and at 0.02 the largest logit the
# adapted hidden state can reach over 1,024 tokens is about 2.5, so the demo's loss could not fall
# much below 5. At 0.1 the demo run learns its rows in seconds (loss 6.9 to under 0.1) and the
# tuned model answers "What is the capital of France?" with the dataset's "The capital of France
# is Paris.", while the base still rambles.
LM_HEAD_STD = 0.1


def is_demo(name: str) -> bool:
    return name.strip().lower() in (DEMO_MODEL, "demo")


def _corpus() -> list[str]:
    """Text the tokenizer is trained on: the demo dataset plus fixed English and Korean lines."""
    from loradeck.engine.data import demo_rows as demo_data

    lines = []
    for row in demo_data.ROWS:
        lines.extend(v for v in row.values() if v)
    lines += [
        "The quick brown fox jumps over the lazy dog.",
        "You are a helpful assistant. Answer briefly and clearly.",
        "system user assistant instruction context response question answer",
        "안녕하세요. 무엇을 도와드릴까요? 한국어 문장도 잘 처리합니다.",
        "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - * / = ( ) . , ! ?",
    ]
    return lines


def fingerprint() -> str:
    h = hashlib.sha256(BUILD_VERSION.encode())
    h.update(json.dumps(dict(ARCH, lm_head_std=LM_HEAD_STD), sort_keys=True).encode())
    h.update(CHAT_TEMPLATE.encode())
    for line in _corpus():
        h.update(line.encode("utf-8"))
    return h.hexdigest()[:12]


def demo_dir() -> Path:
    return paths.cache_dir() / "models" / f"demo-tiny-{fingerprint()}"


def build_tokenizer(corpus: list[str]):
    """A byte-level BPE tokenizer trained on ``corpus``, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=1,
                                  special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
        pad_token="<|pad|>", unk_token=None, model_max_length=ARCH["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def build(target: Path) -> Path:
    """Build demo:tiny into ``target`` (deterministic)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(_corpus())
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **ARCH)
    gen = torch.Generator().manual_seed(1234)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                p.fill_(1.0)
            else:
                std = LM_HEAD_STD if name.startswith("lm_head") else ARCH["initializer_range"]
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, max_new_tokens=64)
    target.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a second's build: no bar in the CLI's output
    try:
        model.save_pretrained(target, safe_serialization=True)
    finally:
        hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(target)
    return target


def ensure() -> Path:
    """The demo:tiny directory, built on first use (safe when several processes race)."""
    target = demo_dir()
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
            return target
        tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        os.replace(tmp, target)
    return target
