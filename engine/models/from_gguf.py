"""A ``.gguf`` file as a base model: converted once into a plain safetensors model directory.

transformers reads GGUF files (``from_pretrained(dir, gguf_file=...)`` with the ``gguf``
package) and dequantizes them, but a GGUF-loaded model cannot be saved as it stands. Here the
dequantized weights are loaded into a fresh model made from the same config (no quantizer
attached), which saves like any other. The directory, under loradeck's cache, is then the
source for training, chat and merge, and loads without the gguf package.

The light part (where the directory goes, whether it is there, what the file's header says)
imports nothing heavy; ``convert`` imports torch and transformers inside.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loradeck.engine.errors import LoradeckError
from loradeck.engine.models.gguf_header import check_header
from loradeck.engine.runs import paths

SAVE_DTYPE = "bfloat16"
"""The dtype the converted weights are saved in (what the quantized file's model trained in:
a GGUF's quantized blocks do not say, and bf16 is the dtype of the chat models people ship)."""

DONE = "loradeck-gguf.json"
ERROR_PREFIX = "error: "


def is_gguf(name: str) -> bool:
    """Does ``name`` name a .gguf file (existing or not)?"""
    return str(name).strip().lower().endswith(".gguf")


def converted_dir(gguf_file: str | Path) -> Path:
    """Where ``gguf_file`` is (or will be) converted: named by its path, size and mtime, so an
    edited file converts again."""
    path = Path(gguf_file).expanduser().resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return paths.cache_dir() / "gguf" / f"{path.stem}-{key}"


def is_converted(gguf_file: str | Path) -> bool:
    return (converted_dir(gguf_file) / DONE).is_file()


def existing(name: str | Path) -> Path:
    """The .gguf file ``name`` names (resolved); one line when there is none."""
    path = Path(name).expanduser()
    if not path.is_file():
        raise LoradeckError("GGUF file not found", kind="model", where=str(name),
                            hint="give the path of a .gguf file, a model directory, a Hub id "
                                 "or demo:tiny")
    return path.resolve()


def check_file(name: str) -> Path:
    """The .gguf file ``name`` names, checked to exist and to hold an architecture that
    transformers can read; raises one line otherwise."""
    path = existing(name)
    arch = architecture(path)
    supported = supported_architectures()
    if supported is not None and arch not in supported:
        raise LoradeckError(f"transformers cannot read a GGUF of architecture {arch!r}",
                            kind="model", where=name,
                            hint=f"it reads {', '.join(sorted(supported))}; use the model's "
                                 "safetensors directory instead")
    return path


def architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF file (gguf-py's reader maps the file, reads little)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise LoradeckError("reading a .gguf model needs the gguf package", kind="config",
                            where=str(path),
                            hint="pip install gguf (or loradeck[gguf], with llama.cpp)") from None
    check_header(path)  # before gguf-py trusts any count in it
    try:
        reader = GGUFReader(str(path))
        field = reader.get_field("general.architecture")
        return str(field.contents()) if field is not None else "?"
    except Exception as exc:
        raise LoradeckError(f"not a readable GGUF file: {exc}", kind="model",
                            where=str(path)) from None


HEADER_KEYS = {  # config.json key -> GGUF key under the architecture's prefix
    "hidden_size": "embedding_length", "intermediate_size": "feed_forward_length",
    "num_hidden_layers": "block_count", "num_attention_heads": "attention.head_count",
    "num_key_value_heads": "attention.head_count_kv", "max_position_embeddings":
    "context_length", "num_local_experts": "expert_count", "vocab_size": "vocab_size"}


def header_config(path: str | Path) -> dict[str, Any]:
    """The config.json keys a memory estimate needs, read from a GGUF file's header (no
    conversion): sizes under ``{arch}.*``, the vocabulary's length, and whether the output
    layer is tied to the embeddings (no ``output.weight`` tensor)."""
    from gguf import GGUFReader

    path = Path(path).expanduser()
    arch = architecture(path)
    reader = GGUFReader(str(path))
    cfg: dict[str, Any] = {"model_type": arch}
    for key, gguf_key in HEADER_KEYS.items():
        field = reader.get_field(f"{arch}.{gguf_key}")
        if field is not None:
            value = field.contents()
            cfg[key] = int(value[0] if isinstance(value, list) else value)
    if "vocab_size" not in cfg and reader.get_field("tokenizer.ggml.tokens") is not None:
        cfg["vocab_size"] = len(reader.get_field("tokenizer.ggml.tokens").data)
    cfg["tie_word_embeddings"] = not any(t.name == "output.weight" for t in reader.tensors)
    return cfg


def model_name(name: str | Path) -> str:
    """``SmolLM2-135M-Instruct`` for ``.../SmolLM2-135M-Instruct.Q4_1.gguf``: the file's name
    without the extension and the quantization type after the last dot."""
    stem = Path(name).name
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    head, dot, tail = stem.rpartition(".")
    if dot and head and re.fullmatch(r"(?i)(f16|f32|bf16|q\d\w*|iq\d\w*|tq\d\w*)", tail):
        stem = head
    return stem


def supported_architectures() -> set[str] | None:
    """The GGUF architectures transformers reads (None when it cannot say)."""
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except Exception:
        return None
    return set(GGUF_SUPPORTED_ARCHITECTURES)


def convert(gguf_file: str | Path, *, progress: Callable[[str], None] | None = None) -> Path:
    """Convert ``gguf_file`` once into a model directory (config, safetensors, tokenizer,
    generation config) and return it. Safe to call from several processes at once: one
    converts, the others wait and reuse its result. Nothing half-written is ever used: the
    directory is written under a temporary name, then renamed."""
    path = check_file(str(gguf_file)).resolve()
    out = converted_dir(path)
    if (out / DONE).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / DONE).is_file():
            return out
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _write(path, tmp, progress or (lambda _line: None))
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write(path: Path, out: Path, say: Callable[[str], None]) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(path.parent), path.name
    say(f"reading the tokenizer of {name}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    say(f"dequantizing the weights of {name}")
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=name, dequantize=True))
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for key in ("quantization_config",):
        if hasattr(config, key):
            delattr(config, key)
    config.dtype = SAVE_DTYPE
    dtype = getattr(torch, SAVE_DTYPE)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {k: v.to(dtype) for k, v in loaded.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise LoradeckError(f"the GGUF's tensors do not fill the model: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}", kind="model", where=str(path))
    if config.tie_word_embeddings:
        model.tie_weights()
    del loaded, state
    say(f"saving the model to {out}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / DONE).write_text(json.dumps({"gguf_file": str(path), "dtype": SAVE_DTYPE},
                                       indent=2) + "\n", encoding="utf-8")


def describe_file(name: str) -> dict[str, Any]:
    """What the Model screen shows for a .gguf file, without converting it."""
    path = Path(name).expanduser()
    info: dict[str, Any] = {"name": name, "known": path.is_file()}
    if path.is_file():
        info.update(architecture=architecture(path), format="gguf",
                    converted=is_converted(path))
    return info


def convert_in_child(gguf_file: str | Path, progress: Callable[[str], None]) -> Path:
    """``convert`` in a child process (``python -m loradeck.engine.models.from_gguf FILE``),
    so that the caller (the app, the CLI) imports no torch or transformers: the child checks
    the file's architecture. Its lines and progress bars go to ``progress`` as they come, a
    bar's updates about once a second."""
    import subprocess
    import sys
    import time

    path = existing(gguf_file)
    out = converted_dir(path)
    if (out / DONE).is_file():
        return out
    check_header(path)  # a crafted header is refused here, in one line, at once
    progress(f"converting {path.name} once into a model directory (cached in {out.parent})")
    child = subprocess.Popen([sys.executable, "-m", "loradeck.engine.models.from_gguf",
                              str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    assert child.stdout is not None
    last_bar, buffer, tail = 0.0, b"", []
    while chunk := child.stdout.read1(4096):
        buffer += chunk
        *pieces, buffer = buffer.replace(b"\r", b"\n").split(b"\n")
        for raw in pieces:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            tail = (tail + [line])[-5:]
            bar = "%|" in line
            if not bar or time.monotonic() - last_bar >= 1.0:
                progress(line)
                last_bar = time.monotonic() if bar else last_bar
    if child.wait() != 0 or not (out / DONE).is_file():
        said = next((t for t in reversed(tail) if t.startswith(ERROR_PREFIX)), None)
        if said is not None:  # the child's own one line (an architecture it cannot read)
            raise LoradeckError(said[len(ERROR_PREFIX):], kind="model")
        raise LoradeckError(f"converting the GGUF file failed: {tail[-1] if tail else ''}",
                            kind="model", where=str(path))
    return out


def main(argv: list[str] | None = None) -> int:
    """Convert one GGUF file; a progress line per step, transformers' bar per tensor pass."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    try:
        out = convert(args[0], progress=lambda line: print(line, flush=True))
    except LoradeckError as exc:
        print(f"{ERROR_PREFIX}{exc.line()}", flush=True)
        return 1
    print(f"converted into {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
