"""The tensors of a GGUF file: names mapped by gguf-py, q/k rows in llama.cpp's order, the
types gguf-py writes itself (a QA-LoRA model's INT4 codes straight into Q4_1 blocks), and the
K-quants from llama.cpp's quantizer."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loradeck.engine.errors import LoradeckError
from loradeck.engine.publish.gguf_vocab import add_spm_vocab, add_vocab, vocab_of

WRITTEN_BY_GGUF_PY = ("f16", "bf16", "q8_0", "q4_0", "q4_1")
KEPT_F16 = ("token_embd.weight", "output.weight")
"""Kept in f16 in the 4-bit types gguf-py writes: 4-bit embeddings and LM head cost the most
accuracy for their size (llama.cpp's quantizer keeps the output at Q6_K for the same reason),
and a QA-LoRA export writes them, untrained and unquantized, as f16 too."""


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
        add_spm_vocab(writer, model_dir, tokenizer, sp_model, n_vocab)
    else:
        add_vocab(writer, model_dir, tokenizer, pre)

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
    writer.write_tensors_to_file(progress=sys.stderr.isatty())  # gguf-py's bar, on a terminal
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
