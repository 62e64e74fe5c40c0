"""Engine overhead: the same training through loradeck and through a plain TRL script.

``loradeck`` runs ``loradeck train CONFIG`` as a person does: the CLI starts the detached job
process, which writes the run directory, events.jsonl, state.json and the train log through its
callbacks, while the CLI follows the events until the run is done.

``plain`` hands the very objects the engine builds from that config (the model from
``loradeck.engine.models.loading.load_model``, the rows from ``loradeck.engine.data.prep.prepare``, PEFT's LoraConfig from
``loradeck.engine.train.sft_args.lora_config`` and TRL's SFTConfig from ``loradeck.engine.train.sft_args.sft_config``) straight to
``SFTTrainer(...).train()`` in one process (with the same padding-free collator switch), then
saves the adapter: identical settings, none of loradeck's machinery.

The CLI's 4-bit preflight probe is cached (``loradeck.engine.system.doctor.cached_probe_4bit``): the first
loradeck run of a series finds no cache and probes in a child process, the later ones do not;
each run records which (``probe_cached``).

Both are timed end to end (process start to exit, adapter saved) and over the training loop
(``trainer.train()``; for loradeck the ``runtime_s`` of its ``done`` event, measured the same way),
repeats interleaved; the figure is loradeck's median over plain's.

    python -m bench.overhead_bench --mode quick
    python -m bench.overhead_bench --mode full --shape qwen2-0.5b
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
from loradeck.engine.system.doctor import PROBE_CACHE

NAME = "overhead_bench"
MODES = {
    "quick": dict(device="cpu", shape="demo:tiny", data="demo", rows=400, steps=30, repeats=3,
                  quant="4bit"),
    "full": dict(device="cuda", shape="qwen2-0.5b", data="synthetic", rows=3000, steps=60,
                 repeats=3, quant="4bit"),
}


def write_config(path: Path, model: str, data: str, a) -> Path:
    """The run config both arms use."""
    from loradeck.engine import config as cfg

    config = cfg.from_overrides([
        f"model.name={model}", f"dataset.path={data}", f"model.quantization={a.quant}",
        f"training.max_steps={a.steps}", f"training.device={a.device}",
        "dataset.eval_fraction=0.0", f"training.save_steps={10 ** 6}",
        f"training.eval_steps={10 ** 6}", *a.set])
    return cfg.save(config, path)


def plain(config_path: str, out_dir: str) -> dict[str, Any]:
    """The engine's objects for this config, trained by TRL alone (no job, events, callbacks)."""
    started = time.time()
    from types import SimpleNamespace

    from transformers import set_seed
    from trl import SFTTrainer

    from loradeck.engine import config as cfg
    from loradeck.engine.data import prep as dataset_prep
    from loradeck.engine.models import loading as models
    from loradeck.engine.train.sft_args import (
        lora_config,
        make_padding_free,
        padding_free_applies,
        sft_config,
    )

    config = cfg.load(config_path)
    t = config.training
    device = models.pick_device(t.device)
    dtype = models.compute_dtype(config.model, device)
    set_seed(t.seed)
    tokenizer = models.load_tokenizer(config.model)
    prepared = dataset_prep.prepare(config, tokenizer)
    model = models.load_model(config.model, device=device, for_training=True)
    if config.model.quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=t.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    run = SimpleNamespace(checkpoints_dir=Path(out_dir) / "checkpoints")
    args = sft_config(config, run, device=device, dtype=dtype, has_eval=prepared.eval is not None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=prepared.train,
                         eval_dataset=prepared.eval, processing_class=tokenizer,
                         peft_config=lora_config(config))
    if padding_free_applies(config):
        make_padding_free(trainer)
    t0 = time.time()
    trainer.train()
    runtime = time.time() - t0
    trainer.save_model(str(Path(out_dir) / "adapter"))
    tokenizer.save_pretrained(str(Path(out_dir) / "adapter"))
    return {"train_runtime_s": round(runtime, 3), "steps": trainer.state.global_step,
            "in_process_s": round(time.time() - started, 3)}


def run_plain(config_path: Path, tmp: Path, env: dict[str, str], timeout: float,
              inline: bool = False) -> dict[str, Any]:
    out = tmp / f"plain-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    if inline:  # tests: no second process start (the wall time then lacks the imports)
        res = plain(str(config_path), str(out))
    else:
        res = common.run_worker(f"bench.{NAME}", ["--config", str(config_path), "--out-dir",
                                                  str(out)], env=env, timeout=timeout)
    res["wall_s"] = round(time.perf_counter() - t0, 3)
    return res


def run_loradeck(config_path: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """``loradeck train CONFIG`` (follows the run to its end); figures from its events."""
    from loradeck.engine.runs.events import read_events

    runs_dir = Path(env["LORADECK_HOME"]) / "runs"
    before = set(runs_dir.iterdir()) if runs_dir.is_dir() else set()
    cache = Path(env.get("LORADECK_CACHE") or Path(env["LORADECK_HOME"]) / "cache")
    probe_cached = (cache / PROBE_CACHE).is_file()
    t0, start_unix = time.perf_counter(), time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "loradeck.tui.cli", "train", str(config_path)],
                              env=env, cwd=str(common.ROOT), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    new = sorted(set(runs_dir.iterdir()) - before) if runs_dir.is_dir() else []
    if proc.returncode != 0 or not new:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit status {proc.returncode}"}
    events = read_events(new[-1] / "events.jsonl")
    done = next((e for e in events if e.get("type") == "done"), {})
    phases = {e["phase"]: e["t"] for e in events if e.get("type") == "status"}

    def span(a: str | None, b: str) -> float | None:
        start = start_unix if a is None else phases.get(a)
        return round(phases[b] - start, 3) if start is not None and b in phases else None

    return {"wall_s": round(wall, 3), "train_runtime_s": done.get("runtime_s"),
            "probe_cached": probe_cached,
            "steps": done.get("step"), "events": len(events),
            "cli_checks_s": span(None, "queued"), "job_setup_s": span("queued", "training"),
            "training_to_done_s": span("training", "done"),
            "after_done_s": round(start_unix + wall - phases["done"], 3)
            if "done" in phases else None}


def run_bench(a) -> dict[str, Any]:
    result = common.result_header(NAME, a.mode, a.argv)
    result["settings"] = {k: getattr(a, k) for k in ("device", "shape", "data", "rows", "steps",
                                                     "repeats", "quant", "threads", "set",
                                                     "inline")}
    with tempfile.TemporaryDirectory(prefix="loradeck-overhead-") as tmp_s:
        tmp = Path(tmp_s)
        env = common.bench_env(a.threads, {"LORADECK_HOME": str(tmp / "home")})
        if a.inline:
            a.rows_out = str(tmp / "rows.jsonl")
            prep = prepare(a)
        else:
            prep = common.run_worker(f"bench.{NAME}", [
                "--prepare", "--shape", a.shape, "--device", a.device, "--data", a.data,
                "--rows", str(a.rows), "--rows-out", str(tmp / "rows.jsonl")], env=env,
                timeout=a.timeout)
        if "error" in prep:
            raise SystemExit(f"preparing the model and rows failed: {prep['error']}")
        config_path = write_config(tmp / "config.yaml", prep["model_dir"], str(tmp / "rows.jsonl"),
                                   a)
        result["config"] = config_path.read_text(encoding="utf-8")
        runs: dict[str, list[dict[str, Any]]] = {"loradeck": [], "plain": []}
        loads = []
        for i in range(a.repeats):
            for arm in ("loradeck", "plain"):
                loads.append(common.load_now())
                r = (run_loradeck(config_path, env, a.timeout) if arm == "loradeck" else
                     run_plain(config_path, tmp, env, a.timeout, a.inline))
                r["repeat"] = i
                runs[arm].append(r)
                print(f"{arm} #{i + 1}: " + (f"error: {r['error']}" if "error" in r else
                                             f"wall {r['wall_s']} s, train loop "
                                             f"{r['train_runtime_s']} s"), flush=True)
    arms = {arm: {"wall_s": common.summary([r.get("wall_s") for r in rs if "error" not in r]),
                  "train_runtime_s": common.summary([r.get("train_runtime_s") for r in rs
                                                     if "error" not in r]),
                  "failed": [r["error"] for r in rs if "error" in r]}
            for arm, rs in runs.items()}
    result["arms"] = arms
    result["raw"] = runs
    result["load_during"] = common.summary(loads)

    def ratio(key: str) -> float | None:
        lo, pl = arms["loradeck"][key]["median"], arms["plain"][key]["median"]
        return round(lo / pl, 4) if lo and pl else None

    result["overhead"] = {"train_loop_ratio": ratio("train_runtime_s"),
                          "end_to_end_ratio": ratio("wall_s"),
                          "target": "loradeck within a few percent of plain TRL"}
    return result


def prepare(a) -> dict[str, Any]:
    from transformers import AutoTokenizer

    path = workload.model_dir(a.shape, a.device)
    tok = AutoTokenizer.from_pretrained(str(path))
    workload.write_jsonl(workload.rows_for(a.data, tok, a.rows), a.rows_out)
    return {"model_dir": str(path)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.overhead_bench",
                                description="loradeck's job machinery against plain TRL")
    workload.add_model_options(p, MODES)
    p.add_argument("--data", help="demo | synthetic | a JSONL file")
    p.add_argument("--rows", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--quant", choices=["4bit", "none"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="more config overrides for both arms")
    p.add_argument("--threads", type=int)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--inline", action="store_true",
                   help="plain arm in this process (tests; its wall time then lacks imports)")
    p.add_argument("--out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rows-out", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    a.argv = sys.argv[1:] if argv is None else argv
    mode = MODES[a.mode]
    for key, value in mode.items():
        if getattr(a, key, None) is None:
            setattr(a, key, value)
    if a.worker:
        res = prepare(a) if a.prepare else plain(a.config, a.out_dir)
        common.write_json(a.result, res)
        return 0
    if a.threads is None and a.device == "cpu":
        a.threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    common.set_threads(a.threads)
    result = run_bench(a)
    out = a.out or common.default_out(NAME, a.mode, a.device)
    common.finish(result, out)
    print(f"wrote {out}")
    print(json.dumps(result["overhead"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
