"""Model sources (demo:tiny, local directory, Hub id, HF cache) and loading them for work.

Resolving and describing a model is light (no torch); loading imports the heavy stack inside
the functions, so the app may import this module.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradeck.engine.errors import LoradeckError
from loradeck.engine.models import demo, from_gguf

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass
class ModelSource:
    """Where a model comes from: ``kind`` is demo, local, gguf or hub; ``ref`` is what to load
    (for a gguf, the directory it is converted into: ``gguf_file`` is the file)."""

    kind: str
    ref: str
    revision: str | None = None
    name: str = ""
    gguf_file: str | None = None

    @property
    def path(self) -> Path | None:
        return Path(self.ref) if self.kind in ("demo", "local", "gguf") else None

    @property
    def ready(self) -> bool:
        """Is there a model directory to read (a gguf converted already)?"""
        return self.kind != "gguf" or from_gguf.is_converted(self.gguf_file or "")


def resolve_source(name: str, revision: str | None = None, *, build_demo: bool = True
                   ) -> ModelSource:
    """Classify ``name``; demo:tiny is built on first use when ``build_demo``."""
    name = (name or "").strip()
    if not name:
        raise LoradeckError("no model given", kind="config", where="model.name",
                            hint="set a Hub id (org/name), a local directory, or demo:tiny")
    if demo.is_demo(name):
        ref = demo.ensure() if build_demo else demo.demo_dir()
        return ModelSource("demo", str(ref), None, demo.DEMO_MODEL)
    p = Path(name).expanduser()
    if from_gguf.is_gguf(name):
        path = from_gguf.existing(name)
        return ModelSource("gguf", str(from_gguf.converted_dir(path)), None, name, str(path))
    if p.exists() or name.startswith((".", "/", "~")):
        if not p.is_dir():
            raise LoradeckError("model directory not found", kind="model", where=name,
                                hint="give a directory holding config.json, a Hub id, or demo:tiny")
        if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
            raise LoradeckError("no config.json in this directory", kind="model", where=name,
                                hint="point model.name at a saved Hugging Face model directory")
        return ModelSource("local", str(p.resolve()), None, name)
    if not HUB_ID.match(name):
        raise LoradeckError(f"{name!r} is neither a directory nor a Hub id", kind="config",
                            where="model.name", hint="use org/name, a local path, or demo:tiny")
    return ModelSource("hub", name, revision, name)


def read_config(name: str, revision: str | None = None) -> dict[str, Any] | None:
    """The model's config.json as a dict, from disk or the HF cache; None when unknown."""
    try:
        src = resolve_source(name, revision, build_demo=False)
    except LoradeckError:
        return None
    if src.kind in ("demo", "local", "gguf"):
        f = Path(src.ref) / "config.json"
        if not f.is_file():
            return None
        return json.loads(f.read_text(encoding="utf-8"))
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(src.ref, "config.json", revision=revision)
    if isinstance(cached, str) and os.path.isfile(cached):
        return json.loads(Path(cached).read_text(encoding="utf-8"))
    return None


def count_parameters(cfg: dict[str, Any]) -> int | None:
    """Parameter count of a decoder-only transformer from its config (None if unsure)."""
    text = cfg.get("text_config") or cfg
    try:
        h = int(text["hidden_size"])
        layers = int(text["num_hidden_layers"])
        inter = int(text.get("intermediate_size") or 4 * h)
        vocab = int(text["vocab_size"])
        heads = int(text["num_attention_heads"])
        kv = int(text.get("num_key_value_heads") or heads)
    except (KeyError, TypeError, ValueError):
        return None
    head_dim = int(text.get("head_dim") or h // heads)
    attn = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
    mlp = 3 * h * inter
    per_layer = attn + mlp + 2 * h
    emb = vocab * h * (1 if text.get("tie_word_embeddings") else 2)
    return layers * per_layer + emb + h


def describe(name: str, revision: str | None = None) -> dict[str, Any]:
    """Architecture, parameter count and whether a chat template is known, without loading."""
    cfg = read_config(name, revision)
    info: dict[str, Any] = {"name": name, "known": cfg is not None}
    if cfg is None:
        return info
    archs = cfg.get("architectures") or [cfg.get("model_type", "?")]
    info.update(architecture=archs[0], model_type=cfg.get("model_type"),
                parameters=count_parameters(cfg),
                layers=(cfg.get("text_config") or cfg).get("num_hidden_layers"),
                hidden_size=(cfg.get("text_config") or cfg).get("hidden_size"),
                vocab_size=(cfg.get("text_config") or cfg).get("vocab_size"))
    return info


def list_cached_models() -> list[dict[str, Any]]:
    """Models in the Hugging Face cache with size on disk (huggingface_hub's cache scan)."""
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir()
    except Exception:  # no cache yet, or unreadable
        return []
    out = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        out.append({"id": repo.repo_id, "size_bytes": repo.size_on_disk,
                    "size": repo.size_on_disk_str, "revisions": len(repo.revisions),
                    "path": str(repo.repo_path), "last_modified": repo.last_modified})
    return sorted(out, key=lambda r: r["id"].lower())


# ---- heavy part: only called inside workers and jobs ---------------------------------------

def pick_device(pref: str = "auto") -> str:
    """'cuda' when asked for or available, else 'cpu'."""
    import torch

    if pref == "cuda":
        if not torch.cuda.is_available():
            raise LoradeckError("training.device is cuda but no CUDA GPU is available",
                                kind="config", where="training.device",
                                hint="set training.device: auto or cpu")
        return "cuda"
    if pref == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_supported(device: str) -> bool:
    import torch

    return device == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def compute_dtype(model_section, device: str):
    """The torch dtype for compute: bf16 on GPUs that have it, fp32 on CPU unless asked."""
    import torch

    choice = getattr(model_section, "compute_dtype", "auto")
    if choice == "bf16":
        return torch.bfloat16
    if choice == "fp16":
        return torch.float16
    if choice == "fp32":
        return torch.float32
    if device == "cuda":
        return torch.bfloat16 if bf16_supported(device) else torch.float16
    return torch.float32


def hub_error(exc: Exception, src: ModelSource) -> LoradeckError:
    """Turn loading failures into one line a person can act on."""
    from huggingface_hub import errors as hf

    name = src.name or src.ref
    chain, cur = [], exc
    while cur is not None and len(chain) < 8:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for inner in chain:
        if isinstance(inner, (hf.GatedRepoError, hf.RevisionNotFoundError,
                              hf.RepositoryNotFoundError)):
            exc = inner
            break
    if isinstance(exc, hf.GatedRepoError):
        return LoradeckError("the model is gated: accept its licence on its Hub page and log in",
                             kind="auth", where=name, hint="then run `hf auth login` or set HF_TOKEN")
    if isinstance(exc, hf.RevisionNotFoundError):
        return LoradeckError(f"revision {src.revision!r} not found", kind="model", where=name,
                             hint="check model.revision (a branch, tag or commit)")
    if (isinstance(exc, hf.RepositoryNotFoundError)
            or "is not a valid model identifier" in str(exc)):
        return LoradeckError("no such model on the Hub (or it is private)", kind="model",
                             where=name, hint="check the spelling of model.name, or log in")
    text = str(exc)
    offline = (isinstance(exc, (hf.OfflineModeIsEnabled, hf.LocalEntryNotFoundError,
                                ConnectionError))
               or "offline" in text.lower() or "couldn't connect" in text.lower()
               or "cannot find the requested files" in text.lower())
    if offline:
        return LoradeckError("the model is not in the local cache and the Hub cannot be reached",
                             kind="network", where=name,
                             hint="download it where there is network (hf download "
                                  f"{name}), use a local directory, or demo:tiny")
    return LoradeckError(f"could not load the model: {text.splitlines()[0] if text else exc!r}",
                         kind="model", where=name)


def ensure_ready(src: ModelSource) -> ModelSource:
    """Convert a gguf source's file into its model directory when not done yet (heavy)."""
    if not src.ready and src.gguf_file:
        from_gguf.convert(src.gguf_file)
    return src


def load_tokenizer(model_section, source: ModelSource | None = None):
    """The tokenizer, with a pad token set (eos when the model has none)."""
    from transformers import AutoTokenizer

    src = source or resolve_source(model_section.name, model_section.revision)
    try:
        if src.kind == "gguf" and not src.ready and src.gguf_file:  # read from the file itself
            gguf = Path(src.gguf_file)
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        else:
            tok = AutoTokenizer.from_pretrained(src.ref, revision=src.revision,
                                                trust_remote_code=model_section.trust_remote_code)
    except Exception as exc:
        if isinstance(exc, LoradeckError):
            raise
        raise hub_error(exc, src) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(quantization: str, dtype):
    """BitsAndBytesConfig for 4-bit NF4 with double quantization, or 8-bit; None for none."""
    if quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except Exception as exc:
        raise LoradeckError(f"{quantization} quantization needs a working bitsandbytes ({exc})",
                            kind="config", where="model.quantization",
                            hint="install bitsandbytes, or set model.quantization: none") from None
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype,
                                  bnb_4bit_quant_storage=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_model(model_section, *, device: str = "auto", for_training: bool = False,
               quantization: str | None = None, source: ModelSource | None = None,
               device_map: Any = None):
    """Load the causal LM named by the config section on ``device``.

    ``quantization`` overrides model.quantization ("none" reloads 16-bit, as merge needs).
    """
    from transformers import AutoModelForCausalLM

    src = ensure_ready(source or resolve_source(model_section.name, model_section.revision))
    dev = pick_device(device)
    dtype = compute_dtype(model_section, dev)
    quant = quantization or model_section.quantization
    kwargs: dict[str, Any] = {"dtype": dtype, "revision": src.revision,
                              "trust_remote_code": model_section.trust_remote_code}
    attn = getattr(model_section, "attn_implementation", "auto")
    if attn != "auto":
        kwargs["attn_implementation"] = attn
    qc = quantization_config(quant, dtype)
    if qc is not None:
        kwargs["quantization_config"] = qc
    if device_map is not None:
        kwargs["device_map"] = device_map
    elif dev == "cuda":
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    elif qc is not None:
        kwargs["device_map"] = {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(src.ref, **kwargs)
    except Exception as exc:
        if isinstance(exc, LoradeckError):
            raise
        if "out of memory" in str(exc).lower():
            raise
        raise hub_error(exc, src) from None
    if for_training:
        model.config.use_cache = False
    return model


def footprint_gb(model) -> float:
    """Memory held by the model's parameters and buffers, in GB."""
    try:
        return round(model.get_memory_footprint() / 1e9, 4)
    except Exception:
        return 0.0


def free_memory(*, reset_peak: bool = False) -> None:
    """Collect garbage and hand the GPU's cached blocks back (after a model is let go or an
    out-of-memory error); ``reset_peak`` also restarts the GPU's peak-memory count."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")  # nothing to hand back when torch was never loaded
    if torch is None:
        return
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            if reset_peak:
                torch.cuda.reset_peak_memory_stats()
    except Exception:  # no usable torch or CUDA: nothing cached to hand back
        pass
