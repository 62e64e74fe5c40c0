"""Benchmark workloads: models built from configs with random weights, and instruction rows.

Models: ``demo:tiny`` (loradeck's offline demo model) or a named shape built from a config with
random weights (no download) and demo:tiny's tokenizer; the token ids the tokenizer makes are a
subset of the shape's vocabulary, so embedding and LM-head sizes are those of the real model.

Rows: the demo dataset, or synthetic dolly-shaped rows (instruction / context / response) whose
token lengths follow the wide spread of the Korean dolly set: short instructions, a context in
about a third of the rows, responses from a few tokens to over a thousand. That spread is what
makes padded batches waste compute and padding-free batches pay.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# name -> (model_type, config fields). Shapes follow the public configs of the named models.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "cpu-small": ("llama", dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                                num_attention_heads=8, num_key_value_heads=4, vocab_size=4096,
                                tie_word_embeddings=False, max_position_embeddings=4096,
                                rms_norm_eps=1e-6, rope_theta=10000.0)),
    "qwen2-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                 num_attention_heads=14, num_key_value_heads=2,
                                 vocab_size=151936, tie_word_embeddings=True,
                                 max_position_embeddings=32768, rms_norm_eps=1e-6,
                                 rope_theta=1000000.0)),
    "qwen2-1.5b": ("qwen2", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                 num_attention_heads=12, num_key_value_heads=2,
                                 vocab_size=151936, tie_word_embeddings=True,
                                 max_position_embeddings=32768, rms_norm_eps=1e-6,
                                 rope_theta=1000000.0)),
    "mistral-7b": ("mistral", dict(hidden_size=4096, intermediate_size=14336,
                                   num_hidden_layers=32, num_attention_heads=32,
                                   num_key_value_heads=8, vocab_size=32768,
                                   tie_word_embeddings=False, max_position_embeddings=32768,
                                   rms_norm_eps=1e-5, rope_theta=1000000.0,
                                   sliding_window=None)),
}
BUILD_VERSION = "1"


def matmul_params(cfg: dict[str, Any]) -> int:
    """Parameters that take part in matrix multiplies for each token: the blocks' linear layers
    and the LM head (the input embedding is a lookup, norms and biases are negligible)."""
    h, layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or h // heads)
    inter = int(cfg["intermediate_size"])
    attn = h * heads * head_dim * 2 + 2 * h * kv * head_dim
    mlp = 3 * h * inter
    return layers * (attn + mlp) + int(cfg["vocab_size"]) * h


def model_dir(name: str, device: str = "cpu") -> Path:
    """A local model directory for ``name``: demo:tiny, a shape from SHAPES, or a path."""
    from loradeck.engine.models import demo

    if demo.is_demo(name):
        return demo.ensure()
    if name in SHAPES:
        return build_shape(name, device)
    p = Path(name).expanduser()
    if (p / "config.json").is_file():
        return p.resolve()
    raise SystemExit(f"unknown model {name!r}: use demo:tiny, one of {', '.join(SHAPES)}, "
                     "or a local model directory")


def _shape_dir(name: str) -> Path:
    from loradeck.engine.models import demo
    from loradeck.engine.runs import paths

    model_type, fields = SHAPES[name]
    key = json.dumps([BUILD_VERSION, model_type, fields, demo.fingerprint()], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return paths.cache_dir() / "bench-models" / f"{name}-{digest}"


def build_shape(name: str, device: str = "cpu") -> Path:
    """Build (once) a random-weight model of shape ``name`` with demo:tiny's tokenizer."""
    import os

    target = _shape_dir(name)
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from loradeck.engine.models import demo

    tok = AutoTokenizer.from_pretrained(demo.ensure())
    model_type, fields = SHAPES[name]
    config = AutoConfig.for_model(model_type, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                  initializer_range=0.02, **fields)
    dev = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    torch.manual_seed(1234)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    del model
    os.replace(tmp, target)
    return target


# ---- rows -----------------------------------------------------------------------------------

# Token-length model of one synthetic row (lognormal: median, sigma; clipped).
LENGTHS = {
    "instruction": (20, 0.6, 4, 200),
    "context": (150, 0.9, 8, 2000),
    "response": (100, 1.0, 2, 2000),
}
CONTEXT_SHARE = 0.3


def _word_pool(tokenizer) -> list[tuple[str, int]]:
    """Words (Korean and English) from the demo rows with their token counts."""
    from loradeck.engine.data import demo_rows as demo_data

    words: set[str] = set()
    for row in demo_data.ROWS:
        for value in row.values():
            words.update(w for w in value.split() if w)
    pool = sorted(words)
    counts = [len(ids) for ids in tokenizer([" " + w for w in pool],
                                            add_special_tokens=False)["input_ids"]]
    return [(w, max(1, c)) for w, c in zip(pool, counts, strict=True)]


def _text(rng: random.Random, pool: list[tuple[str, int]], tokens: int) -> str:
    out, n = [], 0
    while n < tokens:
        word, cost = rng.choice(pool)
        out.append(word)
        n += cost
    return " ".join(out)


def _length(rng: random.Random, field: str) -> int:
    med, sigma, lo, hi = LENGTHS[field]
    return int(min(hi, max(lo, round(math.exp(rng.gauss(math.log(med), sigma))))))


def synthetic_rows(n: int, tokenizer, seed: int = 0) -> list[dict[str, str]]:
    """``n`` dolly-shaped rows with widely varying lengths, deterministic for ``seed``."""
    rng = random.Random(seed)
    pool = _word_pool(tokenizer)
    rows = []
    for _ in range(n):
        ctx = _length(rng, "context") if rng.random() < CONTEXT_SHARE else 0
        rows.append({"instruction": _text(rng, pool, _length(rng, "instruction")) + "?",
                     "context": _text(rng, pool, ctx) if ctx else "",
                     "response": _text(rng, pool, _length(rng, "response")) + "."})
    return rows


def demo_rows() -> list[dict[str, str]]:
    from loradeck.engine.data import demo_rows as demo_data

    return [dict(r) for r in demo_data.ROWS]


def rows_for(data: str, tokenizer, n: int, seed: int = 0) -> list[dict[str, str]]:
    """``demo``, ``synthetic`` or a JSONL path -> instruction rows (demo rows are repeated)."""
    if data == "demo":
        rows = demo_rows()
        return (rows * (n // len(rows) + 1))[:n] if n > len(rows) else rows
    if data == "synthetic":
        return synthetic_rows(n, tokenizer, seed)
    with open(data, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()][:n]


def write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return p


def length_stats(lengths: list[int], batch: int = 4, max_length: int = 1024,
                 seed: int = 0) -> dict[str, Any]:
    """Token-length spread of rows, and the share of padding when batched in random order."""
    if not lengths:
        return {}
    cut = [min(n, max_length) for n in lengths]
    order = list(range(len(cut)))
    random.Random(seed).shuffle(order)
    real = padded = 0
    for i in range(0, len(order), batch):
        chunk = [cut[j] for j in order[i:i + batch]]
        real += sum(chunk)
        padded += max(chunk) * len(chunk)
    s = sorted(lengths)

    def q(p: float) -> int:
        return s[min(len(s) - 1, int(p * (len(s) - 1)))]

    return {"rows": len(s), "mean": round(sum(s) / len(s), 1), "p10": q(0.1), "median": q(0.5),
            "p90": q(0.9), "max": s[-1], "over_max_length": sum(n > max_length for n in s),
            "padding_share": round(1 - real / padded, 3) if padded else 0.0}


def add_model_options(p: argparse.ArgumentParser, modes: Iterable[str]) -> None:
    """The options every bench takes: --mode, one --shape (model) and --device."""
    p.add_argument("--mode", choices=sorted(modes), default="quick")
    p.add_argument("--shape", help="demo:tiny, a shape (" + ", ".join(SHAPES)
                   + ") or a model directory")
    p.add_argument("--device", choices=["cpu", "cuda"])
