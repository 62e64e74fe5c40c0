"""The tokenizer in a GGUF file: byte-level BPE vocabularies and their merges, SentencePiece
ones, special ids and the chat template (gguf-py's ``SpecialVocab`` and ``SentencePieceVocab``),
and the BPE pre-tokenizer type, found by a probe text in llama.cpp itself."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loradeck.engine.errors import LoradeckError
from loradeck.engine.patches import llama_cpp_amx

PRE_TOKENIZERS = ("smollm", "qwen2", "llama-bpe", "gpt-2", "default", "deepseek-llm",
                  "deepseek-coder", "falcon", "starcoder", "refact", "command-r", "olmo",
                  "dbrx", "stablelm2", "gpt-4o", "tekken", "superbpe")
"""Pre-tokenizer types llama.cpp knows, tried in this order against the probe text. qwen2
comes before llama-bpe: they differ only in grouping digits (one at a time, or up to three),
which a vocabulary of single digits (Qwen's) cannot tell apart, while a vocabulary with
multi-digit tokens (Llama 3's) fails qwen2's on the probe's numbers."""
PROBE = ("Hello world! It's 3.14159 o'clock, 12345 and 1,000,000 users. "
         "   spaces\tand\ttabs\n\nnew lines; ünïcödé, 한국어 문장, 日本語, emoji 🦙🚀 "
         "CamelCase snake_case kebab-case URLs https://example.org/a?b=1 'quoted' \"double\" "
         "can't won't I'm you're we'll they've ((nested)) [x] {y} <z> 1+1=2 $9.99 #tag @you")


def vocab_of(tokenizer: Any) -> tuple[list[bytes], list[int]]:
    """Token texts in id order and their llama.cpp types (special added tokens: control;
    other added tokens: user defined)."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    size = max(by_id) + 1
    tokens, types = [], []
    for i in range(size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]".encode())
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(text.encode("utf-8"))
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special
                         else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def add_vocab(writer: Any, model_dir: Path, tokenizer: Any, pre: str) -> None:
    import gguf

    tokens, types = vocab_of(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)  # merges, bos/eos/pad ids, add_bos, chat template
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template and not special.chat_template:
        writer.add_chat_template(template)


def sentencepiece_model(model_dir: Path, base_dir: Path | None = None) -> Path | None:
    """The SentencePiece model behind a tokenizer: tokenizer.model in the merged folder, or in
    the base model's folder (transformers does not save it again)."""
    for d in (model_dir, base_dir):
        if d is not None and (Path(d) / "tokenizer.model").is_file():
            return Path(d) / "tokenizer.model"
    return None


def vocab_kind(model_dir: Path, sp_model: Path | None) -> str:
    """``bpe`` for a byte-level BPE tokenizer (Llama 3, Qwen2, SmolLM), ``spm`` for a
    SentencePiece one (Llama 2, Mistral) whose tokenizer.model is at hand; else one line."""
    try:
        data = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    model, decoder = data.get("model") or {}, data.get("decoder") or {}
    if model.get("type") == "BPE" and not model.get("byte_fallback") \
            and decoder.get("type") == "ByteLevel":
        return "bpe"
    if sp_model is not None:
        return "spm"
    raise LoradeckError("GGUF export needs a byte-level BPE tokenizer (tokenizer.json) or a "
                        "SentencePiece tokenizer.model; neither is here", kind="model",
                        where=str(model_dir),
                        hint="put the base model's tokenizer.model in the merged folder")


def add_spm_vocab(writer: Any, model_dir: Path, tokenizer: Any, sp_model: Path,
                   n_vocab: int) -> None:
    """A SentencePiece vocabulary as llama.cpp's ``llama`` tokenizer: gguf-py's
    SentencePieceVocab gives each piece, score and type; tokens the Hugging Face tokenizer
    added after them follow, and unused rows up to the embedding size are padding."""
    import gguf

    vocab = gguf.SentencePieceVocab(sp_model.parent)
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    for i in range(len(tokens), n_vocab):
        token = added.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]".encode())
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(str(token).encode("utf-8"))
            types.append(gguf.TokenType.CONTROL if token.special
                         else gguf.TokenType.USER_DEFINED)
        scores.append(-1000.0)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=False, n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)  # bos/eos/unk/pad ids, add_bos, chat template
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template and not special.chat_template:
        writer.add_chat_template(template)


PROBE_CONTEXT = 512


@contextlib.contextmanager
def _c_stderr_muted() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null for the block (C code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def find_pre_tokenizer(model_dir: Path, tokenizer: Any, arch: str, work: Path) -> str:
    """The llama.cpp pre-tokenizer type that tokenizes PROBE as transformers does, tried in
    llama.cpp on vocabulary-only files."""
    import gguf

    want = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    for pre in PRE_TOKENIZERS:
        path = work / f"vocab-{pre}.gguf"
        writer = gguf.GGUFWriter(str(path), arch)
        add_vocab(writer, model_dir, tokenizer, pre)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        try:
            with _c_stderr_muted():  # a vocabulary-only file has no context length, and this
                llm = llama_cpp_amx.open_model(  # llama.cpp warns of it past its log callback
                    path, vocab_only=True, verbose=False, n_ctx=PROBE_CONTEXT)
        except Exception:  # a type this llama.cpp does not know
            path.unlink(missing_ok=True)
            continue
        got = llm.tokenize(PROBE.encode("utf-8"), add_bos=False, special=False)
        llm.close()
        path.unlink(missing_ok=True)
        if got == want:
            return pre
    raise LoradeckError("llama.cpp tokenizes this tokenizer's probe text differently under "
                        "every pre-tokenizer type it knows", kind="model", where=str(model_dir))
