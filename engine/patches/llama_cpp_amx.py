"""Open a GGUF in llama.cpp without its AMX matmul on CPUs that have AMX.

Checked against llama-cpp-python 0.3.36 (its vendored llama.cpp). Built from source on a CPU
with AMX (``amx_int8``), llama.cpp places quantized weights in its AMX buffer type, and on
such a machine here ``ggml_backend_amx_mul_mat`` crashed the process (SIGSEGV) as soon as a
batch of more than one token was evaluated, for q8_0, q4_0, q4_1 and q4_k_m files alike (f16
ran). llama.cpp's model parameter ``use_extra_bufts = false`` keeps the weights in plain CPU
buffers; ``Llama`` has no argument for it, so ``open_model`` sets it on the parameters
``Llama`` asks ``llama_model_default_params`` for. Elsewhere nothing changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHECKED_WITH = {"llama-cpp-python": "0.3.36"}


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_int8" in line.split()
               for line in text.splitlines())


@contextlib.contextmanager
def _no_extra_buffers() -> Iterator[None]:
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params

    def params() -> Any:
        p = original()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = original


def open_model(path: str | Path, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(path, **kwargs)``, without extra buffer types where the CPU has AMX."""
    import llama_cpp

    if not cpu_has_amx():
        return llama_cpp.Llama(str(path), **kwargs)
    with _no_extra_buffers():
        return llama_cpp.Llama(str(path), **kwargs)
