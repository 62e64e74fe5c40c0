"""Peak GPU memory of a LoRA / QLoRA run, from the model's config.json alone (pure, light).

``estimate(shape, settings)`` adds up, per GPU, in GB (1e9 bytes, like the ``memory_gb`` the
training events report):

weights
    Linear weights of the decoder layers at 2 bytes (bf16/fp16) or 4 (fp32); 8-bit: ~1 byte;
    4-bit NF4: 0.5 byte plus the double-quantized absmax (1 byte per 64-block plus fp32 per 256
    blocks: +0.016 byte). Embeddings, lm_head and norms are not quantized: with 4/8-bit the
    trainer's ``prepare_model_for_kbit_training`` keeps them in fp32 (4 bytes); unquantized they
    stay in the compute dtype.
lora
    ``r * (in + out)`` per targeted linear per layer (DoRA adds ``out``). Unquantized: fp32
    adapters (4) + fp32 grads (4) + AdamW moments (4 + 4) = 16 bytes a parameter. Quantized: the
    trainer keeps adapters and their grads in bf16 (2 + 2) with fp32 paged-AdamW moments (8) = 12.
activations
    Bytes a token keeps for the backward pass in one decoder layer (Llama-style, SDPA or flash
    attention, frozen base, every figure below per token; ``a`` = 2 for bf16/fp16 compute, 4 for
    fp32; ``m`` = 1 for the dropout mask when lora.dropout > 0, else 0)::

        layer = 2 * 4h                      two RMSNorms keep an fp32 copy of their input
              + a * (2 q + 2 kv) + 4 heads  attention keeps q, k, v, output and the logsumexp
              + 3 a * i                     SwiGLU keeps gate, silu(gate), up  (2 a * i ungated)
              + sum over targeted linears of (a + m) * in + a * r   LoRA input copy, mask, A out
              [eager attention: + heads * S * (4 + a) for the fp32 softmax and its copy]
              [8-bit base: + a * in for every linear, bitsandbytes keeps its input]

    with ``q = heads * head_dim``, ``kv = kv_heads * head_dim``, ``S`` = max_length. This matches
    the tensors autograd saves in transformers' Llama with PEFT LoRA (checked by a test that
    counts them on CPU). Without gradient checkpointing all ``L`` layers keep theirs::

        activations = T * (L * layer + 4h + r_b * h) + T * a * (2h + 2i)  [backward workspace]

    With checkpointing each layer keeps only its input (``r_b * h``, ``r_b`` = 4 when the
    residual stream is fp32 as under 4/8-bit, else ``a``) and one layer is recomputed at a time::

        activations = T * (L * r_b * h + layer + 4h + r_b * h) + T * a * (2h + 2i)

    ``T`` = micro-batch * max_length: batches are padded to their longest row, so a full-length
    row (or packing) reaches it.
logits
    The trainer's fused LM head scores tokens in tiles of 4096 tokens x 32768 vocabulary entries
    (``lm_head="chunked"``, the default): one tile plus an fp32 gradient of the final hidden
    states. ``lm_head="full"`` (the classic loss on materialized logits) keeps ~12 bytes per token
    per vocabulary entry: bf16 logits, their fp32 copy and log-softmax, and two fp32 gradients;
    on small models with large vocabularies that dominates.
context, overhead
    CUDA context and kernels: 0.75 GB. Allocator fragmentation: 8 % of the tensors, plus one
    dequantized weight (4/8-bit), plus DDP buckets and communication buffers with several
    processes.

``Estimate.fits(free_gb)`` says whether the total fits and, when it doesn't, which single
change (gradient checkpointing, a smaller micro-batch with more accumulation, 4-bit, a shorter
max length) makes it fit, each with its own total, or else a combination of them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradeck.engine.errors import LoradeckError

GB = 1e9
CUDA_CONTEXT_GB = 0.75
FRAGMENTATION = 0.08
DDP_BUFFERS_GB = 0.4
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weights + double-quantized absmax
INT8_BYTES = 1.0
TILE_TOKENS = 4096  # the fused LM head's token tile
TILE_VOCAB = 32768  # and its vocabulary tile
FULL_LOGITS_BYTES = 12  # per token per vocabulary entry, classic loss on full logits
MIN_LENGTH = 128  # the shortest max_length a suggestion goes down to

# Models whose MLP is a plain up/down projection (no gate).
UNGATED = {"gpt2", "gpt_neox", "gptj", "opt", "falcon", "phi", "bloom", "gpt_bigcode",
           "starcoder2", "mpt", "codegen", "biogpt"}
TIED_BY_DEFAULT = {"gpt2", "gemma", "gemma2", "gemma3", "gemma3_text", "opt", "bloom", "phi",
                   "gpt_bigcode", "starcoder2"}

# The linears of a Llama-style layer and other common names for the same (or fused) ones.
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALIASES = {
    "query": ("q_proj",), "key": ("k_proj",), "value": ("v_proj",), "wq": ("q_proj",),
    "wk": ("k_proj",), "wv": ("v_proj",), "wo": ("o_proj",), "out_proj": ("o_proj",),
    "dense": ("o_proj",), "c_proj": ("o_proj",),
    "qkv_proj": ("q_proj", "k_proj", "v_proj"), "query_key_value": ("q_proj", "k_proj", "v_proj"),
    "c_attn": ("q_proj", "k_proj", "v_proj"), "wqkv": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"), "w1": ("gate_proj",), "w3": ("up_proj",),
    "w2": ("down_proj",), "fc1": ("up_proj",), "fc2": ("down_proj",), "c_fc": ("up_proj",),
    "dense_h_to_4h": ("up_proj",), "dense_4h_to_h": ("down_proj",),
}

# Shapes of a few well-known models, so a config can be estimated before anything is downloaded.
KNOWN = {
    "mistralai/mistral-7b-v0.1": dict(hidden_size=4096, intermediate_size=14336,
                                      num_hidden_layers=32, num_attention_heads=32,
                                      num_key_value_heads=8, vocab_size=32000,
                                      model_type="mistral"),
    "mistralai/mistral-7b-v0.3": dict(hidden_size=4096, intermediate_size=14336,
                                      num_hidden_layers=32, num_attention_heads=32,
                                      num_key_value_heads=8, vocab_size=32768,
                                      model_type="mistral"),
    "meta-llama/llama-2-7b-hf": dict(hidden_size=4096, intermediate_size=11008,
                                     num_hidden_layers=32, num_attention_heads=32,
                                     num_key_value_heads=32, vocab_size=32000, model_type="llama"),
    "meta-llama/meta-llama-3-8b": dict(hidden_size=4096, intermediate_size=14336,
                                       num_hidden_layers=32, num_attention_heads=32,
                                       num_key_value_heads=8, vocab_size=128256,
                                       model_type="llama"),
    "qwen/qwen2-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                            num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                            tie_word_embeddings=True, model_type="qwen2"),
}
for _base, _also in (("mistralai/mistral-7b-v0.3", "mistralai/mistral-7b-instruct-v0.3"),
                     ("meta-llama/llama-2-7b-hf", "meta-llama/llama-2-7b-chat-hf"),
                     ("meta-llama/meta-llama-3-8b", "meta-llama/meta-llama-3-8b-instruct"),
                     ("meta-llama/meta-llama-3-8b", "meta-llama/llama-3.1-8b"),
                     ("meta-llama/meta-llama-3-8b", "meta-llama/llama-3.1-8b-instruct"),
                     ("qwen/qwen2-0.5b", "qwen/qwen2-0.5b-instruct"),
                     ("qwen/qwen2-0.5b", "qwen/qwen2.5-0.5b"),
                     ("qwen/qwen2-0.5b", "qwen/qwen2.5-0.5b-instruct")):
    KNOWN[_also] = KNOWN[_base]


# ---- the model's shape ---------------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    """What memory depends on in a decoder-only transformer."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tie_embeddings: bool = False
    head_dim: int | None = None
    gated_mlp: bool = True
    num_experts: int = 1
    experts_per_token: int = 1
    model_type: str = ""

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.dim_per_head

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.dim_per_head

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear of one layer (one expert for MoE)."""
        h, i = self.hidden_size, self.intermediate_size
        out = {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
               "o_proj": (self.q_dim, h), "up_proj": (h, i), "down_proj": (i, h)}
        if self.gated_mlp:
            out["gate_proj"] = (h, i)
        return out

    def layer_linear_params(self) -> int:
        attn = sum(a * b for n, (a, b) in self.linears().items() if n in LINEARS[:4])
        mlp = sum(a * b for n, (a, b) in self.linears().items() if n in LINEARS[4:])
        return attn + mlp * self.num_experts

    def embedding_params(self) -> int:
        """Input embeddings plus the LM head (once when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)

    def norm_params(self) -> int:
        return self.hidden_size * (2 * self.num_layers + 1)

    def total_params(self) -> int:
        return (self.num_layers * self.layer_linear_params() + self.embedding_params()
                + self.norm_params())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class BadSize(ValueError):
    """A size in config.json that no model can have (negative, not whole, infinite, text)."""


MAX_SIZE = 2**40  # no dimension, layer count or vocabulary of a real model comes near


def _size(key: str, value: Any) -> int:
    """A config.json size as a positive whole number; BadSize naming ``key`` otherwise."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and value.is_integer():
        ok, value = True, int(value)
    if not ok or not 0 < value < MAX_SIZE:
        from loradeck.engine.config import shown

        raise BadSize(f"{key} must be a positive whole number (got {shown(value)})")
    return value


def shape_from_config(cfg: dict[str, Any]) -> ModelShape:
    """A ModelShape from a Hugging Face config.json dict; ValueError names a missing key,
    BadSize a size no model can have."""
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else None
    c = text if text and "hidden_size" in text else cfg

    def first(*names: str, default: Any = None) -> int:
        for n in names:
            if c.get(n) is not None:
                return _size(n, c[n])
        if default is None:
            raise ValueError(f"config.json has no {names[0]}")
        return default

    model_type = str(c.get("model_type") or cfg.get("model_type") or "")
    h = first("hidden_size", "n_embd", "d_model")
    heads = first("num_attention_heads", "n_head", "num_heads")
    experts = first("num_local_experts", "num_experts", "n_routed_experts", default=1)
    inter_default = 4 * h
    if experts > 1 and c.get("moe_intermediate_size"):
        inter_default = _size("moe_intermediate_size", c["moe_intermediate_size"])
        inter = inter_default
    else:
        inter = first("intermediate_size", "n_inner", "ffn_dim", default=inter_default)
    tie = c.get("tie_word_embeddings", cfg.get("tie_word_embeddings"))
    return ModelShape(
        hidden_size=h,
        intermediate_size=inter,
        num_layers=first("num_hidden_layers", "n_layer", "num_layers"),
        num_heads=heads,
        num_kv_heads=first("num_key_value_heads", "num_kv_heads", default=heads),
        vocab_size=first("vocab_size"),
        tie_embeddings=bool(model_type in TIED_BY_DEFAULT if tie is None else tie),
        head_dim=_size("head_dim", c["head_dim"]) if c.get("head_dim") is not None else None,
        gated_mlp=model_type not in UNGATED,
        num_experts=experts,
        experts_per_token=_size("num_experts_per_tok", c.get("num_experts_per_tok") or 1)
        if experts > 1 else 1,
        model_type=model_type,
    )


def shape_for(model_name: str, revision: str | None = None, *,
              download: bool = False) -> ModelShape | None:
    """The shape of a local directory, demo:tiny, a cached or well-known Hub model; else None.

    With ``download`` a Hub model's config.json (a few kB) is fetched when not cached.
    """
    from loradeck.engine.models import demo, from_gguf
    from loradeck.engine.models import loading as models

    cfg: dict[str, Any] | None = None
    try:
        cfg = models.read_config(model_name, revision)
    except (OSError, ValueError, RecursionError):
        cfg = None
    if cfg is None and demo.is_demo(model_name):
        cfg = dict(demo.ARCH, vocab_size=demo.VOCAB_SIZE, model_type="llama")
    if cfg is None and from_gguf.is_gguf(model_name) and Path(model_name).expanduser().is_file():
        cfg = from_gguf.header_config(model_name)  # before its first run converts it
    if cfg is None:
        cfg = KNOWN.get(model_name.strip().lower())
    if cfg is None and download:
        cfg = _download_config(model_name, revision)
    if cfg is None:
        return None
    try:
        return shape_from_config(cfg)
    except BadSize as exc:
        raise LoradeckError(str(exc), kind="model", where=f"{model_name}: config.json",
                            hint="fix the model's config.json (or download the model again)"
                            ) from None
    except (ValueError, TypeError):
        return None


def _download_config(name: str, revision: str | None) -> dict[str, Any] | None:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(name, "config.json", revision=revision)
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception:  # offline, gated, missing: the caller says the shape is unknown
        return None


# ---- what the run asks for -----------------------------------------------------------------

# Settings field -> the config key a person sets.
CONFIG_KEYS = {
    "quantization": "model.quantization",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "batch_size": "training.batch_size",
    "grad_accum": "training.grad_accum",
    "max_length": "training.max_length",
}


@dataclass(frozen=True)
class Settings:
    """The parts of a run config that decide memory (compute dtype already resolved)."""

    quantization: str = "4bit"  # none | 8bit | 4bit
    compute_dtype: str = "bf16"  # bf16 | fp16 | fp32
    lora_r: int = 16
    target_modules: str | tuple[str, ...] = "all-linear"
    lora_variant: str = "lora"  # lora | rslora | dora | qalora
    group_size: int = 32  # qalora: columns per INT4 group
    lora_dropout: float = 0.05
    batch_size: int = 4
    grad_accum: int = 4
    max_length: int = 1024
    gradient_checkpointing: bool = True
    attn_implementation: str = "auto"
    num_processes: int = 1
    distributed: str = "ddp"  # ddp | fsdp
    lm_head: str = "chunked"  # chunked (the trainer's fused LM head) | full (materialized logits)
    method: str = "sft"  # sft | dpo | kto | orpo | grpo
    num_generations: int = 4  # grpo: answers per prompt
    max_completion_length: int = 128  # grpo: new tokens per answer

    @classmethod
    def from_config(cls, config: Any, *, bf16_supported: bool = True,
                    num_gpus: int = 1) -> Settings:
        """From a loradeck Config; ``auto`` compute is bf16, or fp16 on GPUs without bf16."""
        m, lo, t = config.model, config.lora, config.training
        dtype = m.compute_dtype
        if dtype == "auto":
            dtype = "bf16" if bf16_supported else "fp16"
        procs = t.num_processes
        if procs == "all":
            procs = max(1, num_gpus)
        targets = lo.target_modules
        return cls(quantization=m.quantization, compute_dtype=dtype, lora_r=lo.r,
                   target_modules=targets if isinstance(targets, str) else tuple(targets),
                   lora_variant=lo.variant, group_size=lo.group_size,
                   lora_dropout=lo.dropout, batch_size=t.batch_size,
                   grad_accum=t.grad_accum, max_length=t.max_length,
                   gradient_checkpointing=t.gradient_checkpointing,
                   attn_implementation=m.attn_implementation, num_processes=int(procs),
                   distributed=t.distributed, method=str(t.method),
                   num_generations=config.grpo.num_generations,
                   max_completion_length=config.grpo.max_completion_length)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def tokens(self) -> int:
        """Tokens in one micro-batch at full length: DPO and ORPO run the chosen and the
        rejected answer of each row in one batch, KTO each answer and a mismatched one for its
        KL term; a GRPO batch holds answers, each its prompt plus the new tokens."""
        if self.method in ("dpo", "orpo", "kto"):
            return 2 * self.batch_size * self.max_length
        if self.method == "grpo":
            return self.batch_size * (self.max_length + self.max_completion_length)
        return self.batch_size * self.max_length

    @property
    def act_bytes(self) -> int:
        return 4 if self.compute_dtype == "fp32" else 2

    @property
    def quantized(self) -> bool:
        """The base is quantized by bitsandbytes (qalora's own codes are not: see estimate)."""
        return self.quantization in ("4bit", "8bit")


def _targets(shape: ModelShape, targets: str | tuple[str, ...]) -> tuple[set[str], list[str]]:
    """The Llama-style linears a target list hits, and the names it could not place."""
    have = shape.linears()
    if isinstance(targets, str):
        if targets == "all-linear":
            return set(have), []
        targets = (targets,)
    hit: set[str] = set()
    unknown: list[str] = []
    for t in targets:
        name = t.rsplit(".", 1)[-1]
        names = (name,) if name in LINEARS else ALIASES.get(name.lower(), ())
        names = tuple(n for n in names if n in have)
        if names:
            hit.update(names)
        else:
            unknown.append(t)
    return hit, unknown


def lora_params(shape: ModelShape, settings: Settings) -> int:
    """Trainable parameters LoRA adds (plus DoRA's magnitude vectors)."""
    hit, _ = _targets(shape, settings.target_modules)
    per_layer = 0
    for name, (n_in, n_out) in shape.linears().items():
        if name in hit:
            experts = shape.num_experts if name in LINEARS[4:] else 1
            per_layer += experts * settings.lora_r * (n_in + n_out)
            if settings.lora_variant == "dora":
                per_layer += experts * n_out
    return per_layer * shape.num_layers


def layer_activation_bytes(shape: ModelShape, settings: Settings, *,
                           mask_bytes: float = 1.0) -> float:
    """Bytes one token keeps in one decoder layer without checkpointing (formula above).

    ``mask_bytes`` is the dropout mask element size: 1 on CUDA (bool); on CPU the mask has the
    dtype of its input (4 for the fp32 adapters of an unquantized model).
    """
    a = settings.act_bytes
    h, i = shape.hidden_size, shape.intermediate_size
    m = mask_bytes if settings.lora_dropout > 0 else 0.0
    moe = shape.experts_per_token if shape.num_experts > 1 else 1
    total = 2 * 4 * h
    if settings.attn_implementation == "eager":
        total += shape.num_heads * settings.max_length * (4 + a) + a * 3 * shape.q_dim
    else:
        total += a * (2 * shape.q_dim + 2 * shape.kv_dim) + 4 * shape.num_heads
    total += (3 if shape.gated_mlp else 2) * a * i * moe
    hit, _ = _targets(shape, settings.target_modules)
    for name, (n_in, _out) in shape.linears().items():
        experts = moe if name in LINEARS[4:] else 1
        if name in hit:
            total += experts * ((a + m) * n_in + a * settings.lora_r)
        if settings.quantization == "8bit":
            total += experts * a * n_in
    return total


@dataclass
class Suggestion:
    """A change to the config, with the total it gives."""

    label: str
    changes: dict[str, Any]
    total_gb: float
    fits: bool

    def set_args(self) -> list[str]:
        """``KEY=VALUE`` items for ``--set``."""
        return [f"{k}={_yaml_value(v)}" for k, v in self.changes.items()]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "changes": self.changes, "set": self.set_args(),
                "total_gb": self.total_gb, "fits": self.fits}


def _yaml_value(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


@dataclass
class Verdict:
    """Whether an estimate fits in the free memory, and what would make it fit."""

    fits: bool
    total_gb: float
    free_gb: float
    suggestions: list[Suggestion] = field(default_factory=list)

    @property
    def spare_gb(self) -> float:
        return round(self.free_gb - self.total_gb, 2)

    @property
    def tight(self) -> bool:
        """Fits with less than 10 % of the free memory to spare."""
        return self.fits and self.spare_gb < 0.1 * self.free_gb

    @property
    def message(self) -> str:
        if self.fits:
            note = " (tight: estimates can be off by 10-20 %)" if self.tight else ""
            return (f"fits: ~{self.total_gb:.1f} GB of {self.free_gb:.1f} GB free, "
                    f"{self.spare_gb:.1f} GB to spare{note}")
        return (f"does not fit: needs ~{self.total_gb:.1f} GB, {self.free_gb:.1f} GB free")

    def to_dict(self) -> dict[str, Any]:
        return {"fits": self.fits, "tight": self.tight, "total_gb": self.total_gb,
                "free_gb": self.free_gb, "spare_gb": self.spare_gb, "message": self.message,
                "suggestions": [s.to_dict() for s in self.suggestions]}


@dataclass
class Estimate:
    """Peak memory of one GPU for a run, by part, in GB (1e9 bytes)."""

    shape: ModelShape
    settings: Settings
    weights_gb: float
    lora_gb: float
    activations_gb: float
    logits_gb: float
    context_gb: float
    overhead_gb: float
    total_gb: float
    trainable_params: int
    total_params: int
    notes: list[str] = field(default_factory=list)

    PARTS = (("weights_gb", "weights"), ("lora_gb", "LoRA params, grads, optimizer"),
             ("activations_gb", "activations"), ("logits_gb", "logits"),
             ("context_gb", "CUDA context"), ("overhead_gb", "allocator overhead"))

    def fits(self, free_gb: float) -> Verdict:
        """Compare with ``free_gb`` per GPU; when it doesn't fit, the changes that would."""
        ok = self.total_gb <= free_gb
        return Verdict(ok, self.total_gb, round(free_gb, 2),
                       [] if ok else suggestions(self.shape, self.settings, free_gb))

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k, _ in self.PARTS}
        out.update(total_gb=self.total_gb, trainable_params=self.trainable_params,
                   total_params=self.total_params, notes=list(self.notes))
        return out

    def lines(self) -> list[str]:
        """The breakdown as aligned text lines."""
        s = self.settings
        pct = 100.0 * self.trainable_params / max(self.total_params, 1)
        quant = {"4bit": "4-bit NF4", "8bit": "8-bit", "none": "16-bit" if s.act_bytes == 2
                 else "fp32"}[s.quantization]
        targets = s.target_modules if isinstance(s.target_modules, str) \
            else ",".join(s.target_modules)
        out = [f"{self.total_params / 1e9:.2f}B parameters, {self.shape.num_layers} layers, "
               f"hidden {self.shape.hidden_size}, vocabulary {self.shape.vocab_size}",
               f"{quant} weights, {s.compute_dtype} compute, LoRA r={s.lora_r} on {targets}: "
               f"{self.trainable_params:,} trainable ({pct:.2f}%)",
               f"micro-batch {s.batch_size} x {s.max_length} tokens, grad accum {s.grad_accum}, "
               f"gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}"
               + (f", {s.num_processes} processes ({s.distributed})"
                  if s.num_processes > 1 else ""),
               ""]
        for key, label in self.PARTS:
            out.append(f"  {label:<32}{getattr(self, key):>8.2f} GB")
        out.append(f"  {'total (peak, per GPU)':<32}{self.total_gb:>8.2f} GB")
        return out


def _gb(nbytes: float) -> float:
    return round(nbytes / GB, 2)


def estimate(arch: ModelShape, settings: Settings | Any) -> Estimate:
    """Peak GPU memory for training LoRA on ``arch`` with ``settings`` (or a loradeck Config)."""
    s = settings if isinstance(settings, Settings) else Settings.from_config(settings)
    a = s.act_bytes
    h, i, L = arch.hidden_size, arch.intermediate_size, arch.num_layers
    notes: list[str] = []
    procs = max(1, s.num_processes)
    shard = procs if s.distributed == "fsdp" and procs > 1 else 1

    # weights
    linear = L * arch.layer_linear_params()
    rest = arch.embedding_params() + arch.norm_params()
    if s.lora_variant == "qalora":  # 4-bit codes plus an fp16 scale and offset per group
        weights = linear * (0.5 + 4 / s.group_size) + rest * a
    elif s.quantization == "4bit":
        weights = linear * NF4_BYTES + rest * 4
    elif s.quantization == "8bit":
        weights = linear * INT8_BYTES + rest * 4
    else:
        weights = (linear + rest) * a
    weights /= shard

    # LoRA parameters, gradients, optimizer state
    trainable = lora_params(arch, s)
    per_param = 12 if s.quantized else 16
    lora = trainable * per_param / shard
    _, unknown = _targets(arch, s.target_modules)
    if unknown:
        notes.append(f"target modules not found in a Llama-style layer, not counted: "
                     f"{', '.join(unknown)}")
    if trainable == 0:
        notes.append("no linear is targeted: nothing would train")

    # activations
    T = s.tokens
    layer = layer_activation_bytes(arch, s)
    res = 4 if (s.quantized or a == 4) else a  # residual stream (fp32 under 4/8-bit)
    moe = arch.experts_per_token if arch.num_experts > 1 else 1
    outside = 4 * h + res * h  # final norm, hidden kept for the LM head
    workspace = T * a * (2 * h + 2 * i * moe)
    if s.gradient_checkpointing:
        acts = T * (L * res * h + layer + outside) + workspace
    else:
        acts = T * (L * layer + outside) + workspace
    if not s.quantized and a == 2:  # autocast's bf16 copies of the fp32 adapter weights
        acts += 2 * trainable / (L if s.gradient_checkpointing else 1)

    # logits
    if s.lm_head == "full":
        logits = T * arch.vocab_size * FULL_LOGITS_BYTES
    else:
        logits = min(T, TILE_TOKENS) * min(arch.vocab_size, TILE_VOCAB) * a + T * h * 4 + T * 32
        if s.quantized:  # the fp32 lm_head is cast a tile at a time
            logits += min(arch.vocab_size, TILE_VOCAB) * h * a

    if s.method == "grpo":  # sampling the answers: the KV cache of a generation batch
        acts += 2 * L * arch.kv_dim * T * a
        notes.append(f"grpo: {s.batch_size} answers per micro-batch ({s.num_generations} per "
                     f"prompt), each up to {s.max_length} prompt and "
                     f"{s.max_completion_length} new tokens, with their KV cache while sampled")
    if s.method == "orpo":
        notes.append("orpo: no reference model (the odds ratio is taken on the policy alone)")
    elif s.method != "sft":
        notes.append(f"{s.method}: the reference model is the base with the adapter off: no "
                     "second copy of the weights")

    # context and allocator overhead
    context = CUDA_CONTEXT_GB * GB
    overhead = FRAGMENTATION * (weights + lora + acts + logits)
    if s.quantized or s.lora_variant == "qalora":  # one weight dequantized for the matmul
        overhead += max(n_in * n_out for n_in, n_out in arch.linears().values()) * a
    if procs > 1:
        overhead += DDP_BUFFERS_GB * GB + trainable * 4
        if shard > 1:  # FSDP gathers one layer's weights at a time
            overhead += arch.layer_linear_params() * (NF4_BYTES if s.quantization == "4bit"
                                                      else a) * 2
    if arch.num_experts > 1:
        notes.append("mixture of experts: every expert's weights are counted; LoRA on the "
                     "experts' fused weights is not")

    parts = [_gb(x) for x in (weights, lora, acts, logits, context, overhead)]
    return Estimate(arch, s, *parts, total_gb=round(sum(parts), 2),
                    trainable_params=trainable, total_params=arch.total_params(), notes=notes)


# ---- what would make it fit ----------------------------------------------------------------

def _halvings(value: int, floor: int) -> list[int]:
    out = []
    v = value
    while v // 2 >= floor:
        v //= 2
        out.append(v)
    if value > floor and (not out or out[-1] != floor):
        out.append(floor)
    return out


def _levers(s: Settings) -> list[tuple[str, list[dict[str, Any]]]]:
    """Each lever with its options, mildest first."""
    levers: list[tuple[str, list[dict[str, Any]]]] = []
    if not s.gradient_checkpointing:
        levers.append(("gradient checkpointing (slower, same result)",
                       [{"gradient_checkpointing": True}]))
    effective = s.batch_size * s.grad_accum
    batches = [{"batch_size": b, "grad_accum": math.ceil(effective / b)}
               for b in _halvings(s.batch_size, 1)]
    if batches:
        levers.append(("smaller micro-batch, more accumulation (same effective batch)", batches))
    if s.quantization != "4bit":
        levers.append(("4-bit quantization (QLoRA)", [{"quantization": "4bit"}]))
    lengths = [{"max_length": n} for n in _halvings(s.max_length, MIN_LENGTH)]
    if lengths:
        levers.append(("shorter max length (longer rows are cut)", lengths))
    return levers


def _suggest(shape: ModelShape, s: Settings, label: str, change: dict[str, Any],
             free_gb: float) -> Suggestion:
    total = estimate(shape, s.replace(**change)).total_gb
    keys = {CONFIG_KEYS[k]: v for k, v in change.items()}
    return Suggestion(label, keys, total, total <= free_gb)


def _combined(shape: ModelShape, settings: Settings, free_gb: float) -> Suggestion:
    """Pull the levers in order, each only as far as needed, until it fits (or all are used)."""
    combined: dict[str, Any] = {}
    current = settings
    for _label, options in _levers(settings):
        for option in options:
            combined.update(option)
            current = settings.replace(**combined)
            if estimate(shape, current).total_gb <= free_gb:
                break
        if estimate(shape, current).total_gb <= free_gb:
            break
    total = estimate(shape, current).total_gb
    return Suggestion("all of these together", {CONFIG_KEYS[k]: v for k, v in combined.items()},
                      total, total <= free_gb)


def suggestions(shape: ModelShape, settings: Settings, free_gb: float) -> list[Suggestion]:
    """For each lever, its mildest option that fits (or its strongest when none does); when
    no single change fits, also a combination of them."""
    out: list[Suggestion] = []
    for label, options in _levers(settings):
        pick = None
        for option in options:
            pick = _suggest(shape, settings, label, option, free_gb)
            if pick.fits:
                break
        if pick is not None:
            out.append(pick)
    if out and not any(sg.fits for sg in out):
        out.append(_combined(shape, settings, free_gb))
    out.sort(key=lambda sg: not sg.fits)
    return out


def for_config(config: Any, *, bf16_supported: bool = True, num_gpus: int = 1,
               download: bool = False) -> Estimate | None:
    """The estimate of a loradeck Config; None when the model's shape is unknown."""
    shape = shape_for(config.model.name, config.model.revision, download=download)
    if shape is None:
        return None
    return estimate(shape, Settings.from_config(config, bf16_supported=bf16_supported,
                                                num_gpus=num_gpus))
