"""DPO through loradeck against a plain TRL ``DPOTrainer`` script with the same settings.

``loradeck`` runs ``loradeck train CONFIG`` with ``training.method: dpo``, as a person does
(the detached job, its events, checkpoints off); its figures come from its events: the
training loop's time (the ``done`` event), the median tokens/s and the peak memory of its
``metrics`` events.

``plain`` is the script a person writes from TRL's DPO docs: the model and tokenizer from
transformers, the same pairs as a ``datasets.Dataset`` of conversational rows (TRL applies the
tokenizer's chat template), PEFT's LoraConfig with the same r, alpha, dropout and targets,
``DPOConfig`` with the same batch, accumulation, rate, beta, loss, max_length and steps, and
``DPOTrainer(...).train()``; its tokens/s is TRL's ``num_tokens`` over the loop's time, its
memory loradeck's own measure (``memory_gb``: the GPU's peak, or this process's RSS on a CPU),
sampled at each log. Repeats are interleaved; ratios are loradeck's median over plain's.

    python -m bench.dpo_bench --mode quick
    python -m bench.dpo_bench --mode full      (a GPU: Qwen2-0.5B's shape, 4-bit)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common, workload

NAME = "dpo_bench"
MODES = {
    "quick": dict(device="cpu", shape="demo:tiny", rows=200, steps=30, repeats=3, quant="none",
                  batch=4),
    "full": dict(device="cuda", shape="qwen2-0.5b", rows=2000, steps=60, repeats=3,
                 quant="4bit", batch=4),
}
LR, BETA, MAX_LENGTH, R, ALPHA = 5e-4, 0.1, 256, 16, 32


def pairs(n: int, tokenizer) -> list[dict[str, str]]:
    """``n`` preference pairs: the synthetic dolly-like rows' answer against a shorter one."""
    rows = workload.synthetic_rows(n, tokenizer, seed=1)
    return [{"prompt": r["instruction"], "chosen": r["response"],
             "rejected": r["response"][: max(8, len(r["response"]) // 3)] + "."}
            for r in rows]


def write_config(path: Path, model: str, data: str, a) -> Path:
    from loradeck.engine import config as cfg

    config = cfg.from_overrides([
        f"model.name={model}", f"dataset.path={data}", f"model.quantization={a.quant}",
        "training.method=dpo", f"training.max_steps={a.steps}", f"training.device={a.device}",
        f"training.batch_size={a.batch}", "training.grad_accum=1",
        f"training.learning_rate={LR}", f"preference.beta={BETA}",
        f"training.max_length={MAX_LENGTH}", f"lora.r={R}", f"lora.alpha={ALPHA}",
        "dataset.eval_fraction=0.0", f"training.save_steps={10 ** 6}",
        f"training.eval_steps={10 ** 6}", "training.logging_steps=1",
        "training.warmup_ratio=0"])
    return cfg.save(config, path)


def plain(config_path: str, data: str) -> dict[str, Any]:
    """The plain TRL script (settings read from the same config file)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed
    from trl import DPOConfig, DPOTrainer

    from loradeck.engine import config as cfg
    from loradeck.engine.train.checkpoints import memory_gb

    config = cfg.load(config_path)
    t = config.training
    cuda = config.training.device == "cuda"
    set_seed(t.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.model.name)
    quant = None
    if config.model.quantization == "4bit":
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(
        config.model.name, quantization_config=quant,
        dtype=torch.bfloat16 if cuda else torch.float32)
    with open(data, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    peak = [0.0]

    class Peak(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            peak[0] = max(peak[0], memory_gb("cuda" if cuda else "cpu") or 0.0)
            if logs and "num_tokens" in logs:
                peak.append(float(logs["num_tokens"]))

    args = DPOConfig(output_dir=tempfile.mkdtemp(prefix="plain-dpo-"), max_steps=t.max_steps,
                     per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=1,
                     learning_rate=t.learning_rate, beta=config.preference.beta,
                     max_length=t.max_length, logging_steps=1, save_strategy="no",
                     report_to="none", use_cpu=not cuda, bf16=cuda, disable_tqdm=True,
                     activation_checkpointing=t.gradient_checkpointing, seed=t.seed,
                     warmup_steps=0.0, lr_scheduler_type=t.scheduler)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset,
                         processing_class=tokenizer,
                         peft_config=LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha,
                                                lora_dropout=config.lora.dropout,
                                                target_modules="all-linear",
                                                task_type="CAUSAL_LM"),
                         callbacks=[Peak()])
    t0 = time.time()
    trainer.train()
    runtime = time.time() - t0
    tokens = peak[-1] if len(peak) > 1 else None
    return {"train_runtime_s": round(runtime, 3), "steps": trainer.state.global_step,
            "tokens_per_second": round(tokens / runtime, 1) if tokens else None,
            "peak_memory_gb": round(peak[0], 3)}


def run_loradeck(config_path: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    from loradeck.engine.runs.events import read_events

    runs_dir = Path(env["LORADECK_HOME"]) / "runs"
    before = set(runs_dir.iterdir()) if runs_dir.is_dir() else set()
    proc = subprocess.run([sys.executable, "-m", "loradeck.tui.cli", "train", str(config_path)],
                          env=env, cwd=str(common.ROOT), capture_output=True, text=True,
                          timeout=timeout)
    new = sorted(set(runs_dir.iterdir()) - before) if runs_dir.is_dir() else []
    if proc.returncode != 0 or not new:
        return {"error": " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])}
    events = read_events(new[-1] / "events.jsonl")
    done = next((e for e in events if e.get("type") == "done"), {})
    metrics = [e for e in events if e.get("type") == "metrics"]
    speeds = [e["tokens_per_second"] for e in metrics if e.get("tokens_per_second")]
    return {"train_runtime_s": done.get("runtime_s"), "steps": done.get("step"),
            "tokens_per_second": common.median(speeds[1:] or speeds),
            "peak_memory_gb": max((e.get("memory_gb") or 0.0) for e in metrics)}


def run_bench(a) -> dict[str, Any]:
    result = common.result_header(NAME, a.mode, a.argv)
    result["settings"] = {k: getattr(a, k) for k in ("device", "shape", "rows", "steps",
                                                     "repeats", "quant", "batch", "threads")}
    result["settings"].update(learning_rate=LR, beta=BETA, max_length=MAX_LENGTH, r=R,
                              alpha=ALPHA)
    with tempfile.TemporaryDirectory(prefix="loradeck-dpo-") as tmp_s:
        tmp = Path(tmp_s)
        env = common.bench_env(a.threads, {"LORADECK_HOME": str(tmp / "home")})
        from transformers import AutoTokenizer

        model = workload.model_dir(a.shape, a.device)
        data = workload.write_jsonl(pairs(a.rows, AutoTokenizer.from_pretrained(str(model))),
                                    tmp / "pairs.jsonl")
        config_path = write_config(tmp / "config.yaml", str(model), str(data), a)
        result["config"] = config_path.read_text(encoding="utf-8")
        runs: dict[str, list[dict[str, Any]]] = {"loradeck": [], "plain": []}
        for i in range(a.repeats):
            for arm in ("loradeck", "plain"):
                r = run_loradeck(config_path, env, a.timeout) if arm == "loradeck" else \
                    common.run_worker(f"bench.{NAME}", ["--config", str(config_path),
                                                        "--data", str(data)],
                                      env=env, timeout=a.timeout)
                r["repeat"], r["load"] = i, common.load_now()
                runs[arm].append(r)
                print(f"{arm} #{i + 1}: {r}", flush=True)
    keys = ("train_runtime_s", "tokens_per_second", "peak_memory_gb")
    arms = {arm: {k: common.summary([r.get(k) for r in rs if "error" not in r]) for k in keys}
            for arm, rs in runs.items()}
    result["arms"], result["raw"] = arms, runs

    def ratio(key: str) -> float | None:
        lo, pl = arms["loradeck"][key]["median"], arms["plain"][key]["median"]
        return round(lo / pl, 4) if lo and pl else None

    result["ratios"] = {"tokens_per_second": ratio("tokens_per_second"),
                        "train_runtime": ratio("train_runtime_s"),
                        "peak_memory": ratio("peak_memory_gb"),
                        "target": "no slower (tokens/s >= 1x), no more memory (<= 1x)"}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dpo_bench",
                                description="DPO through loradeck against plain TRL")
    workload.add_model_options(p, MODES)
    for name in ("rows", "steps", "repeats", "batch", "threads"):
        p.add_argument(f"--{name}", type=int)
    p.add_argument("--quant", choices=["4bit", "none"])
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.argv = sys.argv[1:] if argv is None else argv
    for key, value in MODES[a.mode].items():
        if getattr(a, key, None) is None:
            setattr(a, key, value)
    if a.worker:
        common.write_json(a.result, plain(a.config, a.data))
        return 0
    if a.threads is None and a.device == "cpu":
        a.threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    common.set_threads(a.threads)
    result = run_bench(a)
    out = common.finish(result, a.out or common.default_out(NAME, a.mode, a.device))
    print(json.dumps(result["ratios"], indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
