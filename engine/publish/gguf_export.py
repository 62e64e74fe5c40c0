"""Export a run's merged model to GGUF files for llama.cpp, then check them in llama.cpp.

Built on the libraries made for it: the file is written with gguf-py (llama.cpp's own ``gguf``
package: ``GGUFWriter``, the tensor name map, its quantizers for q8_0, q4_0 and q4_1, its
``SpecialVocab`` for merges, special ids and the chat template, and its ``SentencePieceVocab``);
the K-quants come from llama.cpp's quantizer through llama-cpp-python (``llama_model_quantize``)
applied to the f16 file. Byte-level BPE tokenizers (Llama 3, Qwen2, SmolLM) and SentencePiece
ones (Llama 2, Mistral: their tokenizer.model). A BPE pre-tokenizer type is found by what the
tokenizer does to a probe text: each type llama.cpp knows is tried in llama.cpp itself, and the
first that tokenizes the probe as transformers does is kept.

Every file is written under a temporary name and renamed once whole, so a failed export leaves
earlier files intact; then it is loaded in llama.cpp and run next to the merged model in
transformers (RUN/gguf/loradeck-report.json).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loradeck.engine.enums import GGUFType, values
from loradeck.engine.errors import LoradeckError
from loradeck.engine.patches import llama_cpp_amx
from loradeck.engine.runs import leftovers
from loradeck.engine.runs import lock as joblock
from loradeck.engine.runs import run_files as safe_io

QUANTS = values(GGUFType)
DEFAULT_QUANT = "q4_k_m"
WRITTEN_BY_GGUF_PY = ("f16", "bf16", "q8_0", "q4_0", "q4_1")
EXACT = ("f16", "bf16")  # greedy tokens must match the merged model's
KEPT_F16 = ("token_embd.weight", "output.weight")
"""Kept in f16 in the 4-bit types gguf-py writes: 4-bit embeddings and LM head cost the most
accuracy for their size (llama.cpp's quantizer keeps the output at Q6_K for the same reason),
and a QA-LoRA export writes them, untrained and unquantized, as f16 too."""
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama",
                 "Qwen2ForCausalLM": "qwen2"}
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
CHECK_TEXTS = ("What is LoRA fine-tuning?", "한국의 수도는 어디인가요?",
               "Write one sentence about the sea.", PROBE)
CHECK_NEW_TOKENS = 16
EVAL_ROWS = 4


def supported(architecture: str) -> str:
    """The GGUF architecture for a transformers one, or one line naming what is supported."""
    arch = ARCHITECTURES.get(architecture)
    if arch is None:
        raise LoradeckError(f"GGUF export does not cover {architecture}", kind="model",
                            where="model.name",
                            hint=f"it covers {', '.join(sorted(ARCHITECTURES))}")
    return arch


def run_file(run: Any, quant: str, out_dir: Path | None = None) -> Path:
    """Where ``run``'s GGUF file of type ``quant`` is written: RUN/gguf/<run-id>-<Q>.gguf."""
    return (Path(out_dir) if out_dir else run.dir / "gguf") / f"{run.id}-{quant}.gguf"


def run_files(run: Any) -> list[Path]:
    """``run``'s exported GGUF files, the default type first, then in QUANTS order."""
    order = [DEFAULT_QUANT] + [q for q in QUANTS if q != DEFAULT_QUANT]
    return [run_file(run, q) for q in order if run_file(run, q).is_file()]


def quant_of(path: Path) -> str:
    """The type named in an exported file's name (<run-id>-<Q>.gguf)."""
    return next((q for q in QUANTS if path.name.endswith(f"-{q}.gguf")), "gguf")


def exported_file(run: Any, quant: str) -> Path:
    """``run``'s exported file of type ``quant``; one line naming the export to run when it
    is missing."""
    path = run_file(run, quant)
    if not path.is_file():
        raise LoradeckError(f"run {run.id} has no {quant} GGUF file", kind="usage",
                            where=str(path.parent),
                            hint=f"export it first: loradeck export {run.id} --quant {quant}")
    return path


def check_quants(quants: list[str]) -> list[str]:
    bad = [q for q in quants if q not in QUANTS]
    if bad:
        raise LoradeckError(f"unknown GGUF type {bad[0]!r}", kind="usage", where="--quant",
                            hint=f"use one of {', '.join(QUANTS)}")
    return list(dict.fromkeys(quants or [DEFAULT_QUANT]))


# ---- the tokenizer --------------------------------------------------------------------------

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


def _add_vocab(writer: Any, model_dir: Path, tokenizer: Any, pre: str) -> None:
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


def _add_spm_vocab(writer: Any, model_dir: Path, tokenizer: Any, sp_model: Path,
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


def find_pre_tokenizer(model_dir: Path, tokenizer: Any, arch: str, work: Path) -> str:
    """The llama.cpp pre-tokenizer type that tokenizes PROBE as transformers does, tried in
    llama.cpp on vocabulary-only files."""
    import gguf

    want = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    for pre in PRE_TOKENIZERS:
        path = work / f"vocab-{pre}.gguf"
        writer = gguf.GGUFWriter(str(path), arch)
        _add_vocab(writer, model_dir, tokenizer, pre)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        try:
            llm = llama_cpp_amx.open_model(path, vocab_only=True, verbose=False)
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


# ---- the tensors ----------------------------------------------------------------------------

def _permute(w: Any, heads: int) -> Any:
    """HF's rotate-half q/k rows into llama.cpp's interleaved order (llama architecture)."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _tensor_type(name: str, array: Any, quant: str) -> Any:
    import gguf

    t = gguf.GGMLQuantizationType
    if array.ndim < 2 or name.endswith("_norm.weight"):
        return t.F32
    if quant == "f16":
        return t.F16
    if quant == "bf16":
        return t.BF16
    if quant in ("q4_0", "q4_1") and name in KEPT_F16:
        return t.F16
    want = {"q8_0": t.Q8_0, "q4_0": t.Q4_0, "q4_1": t.Q4_1}[quant]
    block = gguf.GGML_QUANT_SIZES[want][0]
    return want if array.shape[-1] % block == 0 else t.F16


def int4_codes(model_dir: Path) -> tuple[int, dict[str, Any]] | None:
    """A merged QA-LoRA model's INT4 codes (group size, codes by layer), or None."""
    from loradeck.engine.quant import qalora

    path = model_dir / qalora.CODES_FILE
    return qalora.load_codes(path) if path.is_file() else None


def _exact_q4_1(codes: Any, permute_heads: int | None) -> Any:
    """A layer's INT4 codes as Q4_1 blocks, rows in llama.cpp's order: nothing re-quantized."""
    from loradeck.engine.quant import int4

    q, d, m = int4.unpack(codes.packed), codes.scales, codes.offsets
    if permute_heads:
        q, d, m = (_permute(t, permute_heads) for t in (q, d, m))
    return int4.q4_1_blocks(int4.Codes(int4.pack(q.contiguous()), d.contiguous(),
                                       m.contiguous(), codes.group_size))


def write_gguf(model_dir: Path, out: Path, quant: str, *, pre: str, arch: str,
               say: Callable[[str], None], int4: dict[str, Any] | None = None,
               sp_model: Path | None = None) -> None:
    """Write ``model_dir`` (a merged transformers model) as one GGUF file of type ``quant``
    (one of WRITTEN_BY_GGUF_PY). ``int4`` (q4_1 only): a QA-LoRA model's group-32 codes by
    layer, written straight into Q4_1 blocks; every other matrix is then written as f16."""
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch == "llama"
                                     else gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name(model_dir.parent.name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_theta") \
        or getattr(config, "rope_theta", None)
    if rope:
        writer.add_rope_freq_base(float(rope))
    n_vocab = config.vocab_size if sp_model is not None else len(vocab_of(tokenizer)[0])
    writer.add_vocab_size(n_vocab)
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
             "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}[quant]
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if sp_model is not None:
        _add_spm_vocab(writer, model_dir, tokenizer, sp_model, n_vocab)
    else:
        _add_vocab(writer, model_dir, tokenizer, pre)

    files = sorted(f for f in model_dir.glob("*.safetensors") if f.name != "int4.safetensors")
    keys = [(f, k) for f in files for k in safe_open(str(f), framework="pt").keys()]
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for n, (f, key) in enumerate(keys, start=1):
        if tied and key == "lm_head.weight":
            continue  # llama.cpp uses token_embd as the output when output is absent
        with safe_open(str(f), framework="pt") as st:
            tensor = st.get_tensor(key).to(torch.float32)
        if arch == "llama" and key.endswith("q_proj.weight"):
            tensor = _permute(tensor, heads)
        elif arch == "llama" and key.endswith("k_proj.weight"):
            tensor = _permute(tensor, kv)
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise LoradeckError(f"no GGUF name for tensor {key}", kind="model",
                                where=str(model_dir))
        layer = key.removesuffix(".weight")
        if int4 is not None and layer in int4 and key.endswith(".weight"):
            groups = (heads if key.endswith("q_proj.weight") else kv if key.endswith(
                "k_proj.weight") else None) if arch == "llama" else None
            data = _exact_q4_1(int4[layer], groups)
            writer.add_tensor(name, data, raw_shape=data.shape,
                              raw_dtype=gguf.GGMLQuantizationType.Q4_1)
            continue
        array = tensor.numpy()
        qtype = _tensor_type(name, array, "f16" if int4 is not None else quant)
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, array.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            data = gguf.quants.quantize(array, qtype)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
        if n % 20 == 0 or n == len(keys):
            say(f"{quant}: {n}/{len(keys)} tensors")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)  # gguf-py's bar for the write pass
    writer.close()


def quantize_with_llama_cpp(source: Path, out: Path, quant: str) -> None:
    """A K-quant of the f16 file ``source``, by llama.cpp's own quantizer."""
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = max(1, (os.cpu_count() or 1))
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if code != 0:
        raise LoradeckError(f"llama.cpp could not quantize to {quant} (code {code})",
                            kind="model", where=str(source))


# ---- the check in llama.cpp -----------------------------------------------------------------

def _llama(path: Path) -> Any:
    return llama_cpp_amx.open_model(path, n_ctx=1024, logits_all=True, verbose=False,
                                    n_threads=max(1, os.cpu_count() or 1), seed=0)


def _greedy_llama(llm: Any, ids: list[int], n: int) -> list[int]:
    out: list[int] = []
    llm.reset()
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0,
                              reset=True):
        if token == llm.token_eos() or len(out) >= n:
            break
        out.append(int(token))
        if len(out) >= n:
            break
    return out


def _mean_loss_llama(llm: Any, rows: list[tuple[list[int], list[int]]]) -> float | None:
    """The mean loss over the trained tokens of ``rows``, in an open llama.cpp model."""
    total, count = 0.0, 0
    for ids, mask in rows:
        s, n = _loss_llama(llm, ids, mask)
        total, count = total + s, count + n
    return round(total / count, 5) if count else None


def _loss_llama(llm: Any, ids: list[int], mask: list[int]) -> tuple[float, int]:
    import numpy as np

    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    total, count = 0.0, 0
    for pos in range(1, len(ids)):
        if not mask[pos]:
            continue
        row = logits[pos - 1]
        top = row.max()
        total += float(top + math.log(np.exp(row - top).sum()) - row[ids[pos]])
        count += 1
    return total, count


def check_file(path: Path, quant: str, reference: dict[str, Any], tokenizer: Any,
               sp_model: Path | None = None) -> dict[str, Any]:
    """The file in llama.cpp next to the merged model's ``reference`` results. Its token ids
    are checked against the tokenizer's own: transformers' for BPE, and for a SentencePiece
    vocabulary the SentencePiece model itself (transformers' agreement is recorded beside)."""
    hf_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in CHECK_TEXTS]
    own_ids = hf_ids
    if sp_model is not None:
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=str(sp_model))
        own_ids = [processor.encode(t) for t in CHECK_TEXTS]
    llm = _llama(path)
    try:
        got = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)
               for t in CHECK_TEXTS]
        token_texts = [a == b for a, b in zip(got, own_ids, strict=True)]
        greedy = [_greedy_llama(llm, ids, CHECK_NEW_TOKENS) for ids in reference["prompts"]]
        agree = [a == b for a, b in zip(greedy, reference["greedy"], strict=True)]
        same_tokens = sum(sum(x == y for x, y in zip(a, b, strict=False))
                          for a, b in zip(greedy, reference["greedy"], strict=True))
        total = sum(len(b) for b in reference["greedy"]) or 1
        eval_loss = _mean_loss_llama(llm, reference["eval_rows"])
    finally:
        llm.close()
    extra = {} if sp_model is None else {"tokenizer_ids_match_transformers": all(
        a == b for a, b in zip(got, hf_ids, strict=True))}
    return {"file": path.name, "type": quant, "bytes": path.stat().st_size,
            "tokenizer_ids_match": all(token_texts), **extra, "greedy_match": all(agree),
            "greedy_prompts_matching": sum(agree), "greedy_token_agreement":
                round(same_tokens / total, 4), "eval_loss": eval_loss,
            "eval_loss_merged": reference["eval_loss"],
            "eval_loss_gap": None if eval_loss is None or reference["eval_loss"] is None
            else round(eval_loss - reference["eval_loss"], 5)}


def reference_results(model_dir: Path, eval_rows: list[tuple[list[int], list[int]]],
                      template: str) -> dict[str, Any]:
    """The merged model's greedy tokens on the check prompts and its eval loss (transformers,
    fp32 on the CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loradeck.engine.data import templates

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    renderer = templates.Renderer(tokenizer, template)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    prompts, greedy = [], []
    eos = {tokenizer.eos_token_id} | templates.end_of_turn_ids(tokenizer, template)
    with torch.inference_mode():
        for text in CHECK_TEXTS[:3]:
            ids = tokenizer(renderer.prompt([{"role": "user", "content": text}]))["input_ids"]
            seq = model.generate(input_ids=torch.tensor([ids]), do_sample=False,
                                 max_new_tokens=CHECK_NEW_TOKENS, repetition_penalty=1.0,
                                 eos_token_id=sorted(eos), pad_token_id=tokenizer.pad_token_id,
                                 temperature=None, top_p=None, top_k=None)
            new = [int(t) for t in seq[0, len(ids):] if int(t) not in eos]
            prompts.append(ids)
            greedy.append(new)
    return {"prompts": prompts, "greedy": greedy, "eval_rows": eval_rows,
            "eval_loss": masked_loss(model, eval_rows)}


def masked_loss(model: Any, rows: list[tuple[list[int], list[int]]]) -> float | None:
    """Mean loss of a transformers model over the trained (mask 1) tokens of ``rows``."""
    import torch

    loss_sum, loss_n = 0.0, 0
    with torch.inference_mode():
        for ids, mask in rows:
            logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0]
            logp = torch.log_softmax(logits[:-1].double().cpu(), dim=-1)
            for pos in range(1, len(ids)):
                if mask[pos]:
                    loss_sum -= float(logp[pos - 1, ids[pos]])
                    loss_n += 1
    return round(loss_sum / loss_n, 5) if loss_n else None


def llama_loss(path: Path, rows: list[tuple[list[int], list[int]]]) -> float | None:
    """The same loss, of a GGUF file in llama.cpp."""
    llm = _llama(path)
    try:
        return _mean_loss_llama(llm, rows)
    finally:
        llm.close()


# ---- the whole export -----------------------------------------------------------------------

REPORT_NAME = "loradeck-report.json"
WORK_PREFIX = ".tmp-"
WRITTEN_BY = "loradeck gguf export"
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
               "/run", "/sbin", "/sys", "/usr", "/var/lib", "/var/log", "/var/run")


def report_path(out_dir: Path) -> Path:
    return Path(out_dir) / REPORT_NAME


def check_out_dir(out_dir: Path) -> Path:
    """Refuse an ``--out`` that is a file, a system folder, or holds a report loradeck did not
    write, in one line; the folder (made when missing)."""
    out_dir = Path(out_dir).expanduser()
    real = out_dir.resolve()
    if real == Path("/") or any(real == Path(d) or real.is_relative_to(d) for d in SYSTEM_DIRS):
        raise LoradeckError("is a system folder", kind="usage", where=f"--out {out_dir}",
                            hint="export into a folder of your own, e.g. --out ~/gguf")
    if out_dir.exists() and not out_dir.is_dir():
        raise LoradeckError("is a file, not a folder", kind="usage", where=f"--out {out_dir}",
                            hint="give a folder (it is made when missing)")
    report = report_path(out_dir)
    if (report.exists() or report.is_symlink()) and not _read_report(report):
        raise LoradeckError("holds a file loradeck did not write", kind="usage",
                            where=str(report), hint="move it away, or export into another "
                            "folder with --out")
    safe_io.real_dir(out_dir)
    return out_dir


def export(run: Any, quants: list[str], *, out_dir: Path | None = None,
           say: Callable[[str], None] = lambda _line: None) -> dict[str, Any]:
    """Export ``run``'s merged model (merging first when needed) to one GGUF file per type,
    check each in llama.cpp, and write the report; returns the report. The run's job lock is
    held throughout: no merge, push or training runs beside it."""
    quants = check_quants(quants)
    out_dir = check_out_dir(out_dir if out_dir else run.dir / "gguf")
    if run.alive() and not joblock.held_here(run.dir):
        raise joblock.AlreadyRunning(run.id, joblock.holder_pid(run.dir))
    with joblock.holding(run.dir, run.id):
        return _export_locked(run, quants, out_dir, say)


def _export_locked(run: Any, quants: list[str], out_dir: Path, say: Callable[[str], None]
                   ) -> dict[str, Any]:
    from transformers import AutoConfig, AutoTokenizer

    from loradeck.engine.data import prep as dataset_prep
    from loradeck.engine.publish import merge as merging
    from loradeck.engine.quant import int4

    gone = leftovers.remove_stale(out_dir, WORK_PREFIX)
    if gone:
        say(f"removed {len(gone)} temporary folder(s) left by an export that was stopped")
    merging.recover(run)
    if not run.merged_dir.is_dir():
        say("the run has no merged model yet: merging first")
        merging.merge_run(run)
    model_dir = run.merged_dir
    config = AutoConfig.from_pretrained(model_dir)
    arch = supported((config.architectures or ["?"])[0])
    run_config = run.config()
    from loradeck.engine.models.layout import model_dir as base_model_dir

    try:
        base_dir = base_model_dir(run_config.model.name, run_config.model.revision)
    except LoradeckError:
        base_dir = None
    sp_model = sentencepiece_model(model_dir, base_dir)
    kind = vocab_kind(model_dir, sp_model)
    sp_model = sp_model if kind == "spm" else None
    work = out_dir / f"{WORK_PREFIX}{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    try:
        if sp_model is None:
            say("finding the pre-tokenizer type by a probe text, in llama.cpp")
            pre = find_pre_tokenizer(model_dir, tokenizer, arch, work)
            say(f"pre-tokenizer: {pre}")
        else:
            pre = "default"
            say(f"SentencePiece vocabulary from {sp_model}")
        prepared = dataset_prep.prepare(run_config, tokenizer)
        rows = prepared.eval if prepared.eval is not None else prepared.train
        eval_rows = [(r["input_ids"][:512], r["assistant_masks"][:512])
                     for r in rows.select(range(min(EVAL_ROWS, len(rows))))]
        say("running the merged model in transformers, for the checks")
        reference = reference_results(model_dir, eval_rows, run_config.dataset.template)
        written: dict[str, Path] = {}
        exact_files: dict[str, bool] = {}
        qa = int4_codes(model_dir)
        f16_tmp: Path | None = None
        for quant in quants:
            started = time.monotonic()
            final = run_file(run, quant, out_dir)
            tmp = work / final.name
            say(f"writing {final.name}")
            exact = qa is not None and quant == "q4_1" and qa[0] == int4.BLOCK
            if exact:
                say("q4_1: the QA-LoRA codes, scales and folded offsets go straight into Q4_1 "
                    "blocks; nothing is re-quantized")
            elif qa is not None and quant == "q4_1":
                say(f"q4_1: the QA-LoRA codes are in groups of {qa[0]}, so they are re-blocked "
                    f"into Q4_1's groups of {int4.BLOCK} (a second quantization)")
            if quant in WRITTEN_BY_GGUF_PY:
                write_gguf(model_dir, tmp, quant, pre=pre, arch=arch, say=say,
                           int4=qa[1] if exact else None, sp_model=sp_model)
                exact_files[quant] = exact
            else:
                if f16_tmp is None:
                    f16_tmp = work / "source-f16.gguf"
                    write_gguf(model_dir, f16_tmp, "f16", pre=pre, arch=arch, say=say,
                               sp_model=sp_model)
                say(f"{quant}: llama.cpp's quantizer")
                quantize_with_llama_cpp(f16_tmp, tmp, quant)
            os.replace(tmp, final)
            write_modelfile(final, stop_tokens(tokenizer, run_config.dataset.template))
            written[quant] = final
            say(f"{final.name}: {final.stat().st_size:,} bytes in "
                f"{time.monotonic() - started:.1f} s")
        results = []
        for quant, path in written.items():
            say(f"checking {path.name} in llama.cpp")
            results.append(check_file(path, quant, reference, tokenizer, sp_model)
                           | ({"int4_exact": exact_files.get(quant, False)} if qa else {}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"written_by": WRITTEN_BY, "run": run.id, "architecture": arch,
              "tokenizer": kind, "pre_tokenizer": pre, "check_prompts": 3,
              "new_tokens": CHECK_NEW_TOKENS, "eval_rows": len(eval_rows), "files": results}
    previous = _read_report(report_path(out_dir))
    kept = [f for f in previous.get("files", []) if isinstance(f, dict)
            and f.get("type") not in written]
    report["files"] = kept + results
    tmp_report = out_dir / f".{REPORT_NAME}.{os.getpid()}.tmp"
    safe_io.write_text(tmp_report, json.dumps(report, indent=2) + "\n")
    os.replace(tmp_report, report_path(out_dir))
    bad = [r["file"] for r in results if r["type"] in EXACT
           and not (r["greedy_match"] and r["tokenizer_ids_match"])]
    if bad:
        raise LoradeckError(f"{bad[0]} does not match the merged model in llama.cpp",
                            kind="model", where=str(report_path(out_dir)),
                            hint="the report names what differs")
    return report


def stop_tokens(tokenizer: Any, template: str = "auto") -> list[str]:
    """The texts of the tokens a reply stops at: the template's end of turn and the eos."""
    from loradeck.engine.data import templates

    ids = templates.end_of_turn_ids(tokenizer, template) | {tokenizer.eos_token_id}
    return [tokenizer.convert_ids_to_tokens(i) for i in sorted(i for i in ids if i is not None)]


def modelfile_path(gguf_file: Path) -> Path:
    return gguf_file.with_suffix(".Modelfile")


def write_modelfile(gguf_file: Path, stops: list[str]) -> Path:
    """A minimal Ollama Modelfile beside the file: ``ollama create NAME -f <it>``."""
    lines = [f"FROM ./{gguf_file.name}"] + [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    path = modelfile_path(gguf_file)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _read_report(path: Path) -> dict[str, Any]:
    """A report loradeck wrote at ``path``; {} for anything else (missing, a link, not JSON,
    not ours)."""
    try:
        data = json.loads(safe_io.read_bytes(path))
    except (OSError, ValueError, RecursionError, LoradeckError):
        return {}
    return data if isinstance(data, dict) and data.get("written_by") == WRITTEN_BY else {}


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as a person reads it: one line per file."""
    lines = []
    for r in report.get("files", []):
        gap = r.get("eval_loss_gap")
        lines.append(
            f"{r['file']}: {r['bytes'] / 1e6:.1f} MB; tokenizer "
            f"{'same ids' if r['tokenizer_ids_match'] else 'DIFFERENT ids'}; greedy "
            f"{r['greedy_prompts_matching']}/{report.get('check_prompts', 3)} prompts the same "
            f"({100 * r['greedy_token_agreement']:.0f}% of tokens); eval loss "
            f"{r['eval_loss']} (merged {r['eval_loss_merged']}"
            + (f", gap {gap:+.4f})" if gap is not None else ")"))
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m loradeck.engine.publish.gguf_export RUN_DIR [--quant Q]...``, as the app
    runs it: its lines go to the run's events.jsonl as log events, and to stdout."""
    import argparse
    import sys

    from loradeck.engine.runs.events import EventWriter
    from loradeck.engine.runs.store import RunStore

    p = argparse.ArgumentParser(prog="python -m loradeck.engine.publish.gguf_export")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--quant", action="append", default=None)
    args = p.parse_args(argv)
    try:
        run = RunStore().resolve(args.run)
        events = EventWriter(run.events_path)

        def say(line: str) -> None:
            events.log(line)
            print(line, flush=True)

        report = export(run, args.quant or [], say=say)
        for line in report_lines(report):
            say(line)
    except LoradeckError as exc:
        print(f"loradeck: {exc.line()}", file=sys.stderr, flush=True)
        return exc.kind.exit_status
    return 0


if __name__ == "__main__":
    from loradeck.engine.system.process_exit import exit_now

    exit_now(main())
