"""Training throughput: loradeck's default recipe against the notebook recipe, side by side.

Both recipes train the same model on the same rows for the same steps on the same device, each
in a fresh worker process, repeats interleaved (notebook, loradeck, notebook, ...) so drifting
machine load hits both alike. Each run reports:

- tokens/s: real (non-pad) input tokens per second, and padded tokens (every position the model
  computes, pad included) per second, over the steps after the warm-up steps;
- peak memory: CUDA max allocated, or the worker's peak resident set on a CPU;
- MFU (model FLOPs utilisation) on a 4*N FLOPs-per-token basis: for LoRA on a frozen base the
  base does a forward (2N FLOPs per token) and a backward for activation gradients only (2N),
  no weight gradients; N counts the weights in matrix multiplies (blocks and LM head), not the
  input embedding; attention scores and the small LoRA matrices are left out. MFU = real
  tokens/s * 4N / the device's peak (``--peak-tflops``; H100 bf16 dense 989). On a CPU the peak
  is the fp32 matmul rate measured on the spot with the same thread count.

Arms: ``notebook`` (bench/notebook_recipe.py) and ``loradeck`` (loradeck.engine.train.trainer.train_once with
the config defaults: events, callbacks and all), each with optional changes to measure one
option at a time: ``+padding_free``, ``+padded``, ``+packing``, ``+eager``, ``+sdpa``,
``+flash``, ``+no_gc``, ``+reentrant``, ``+liger`` and, for loradeck, ``:section.key=value,...``.
loradeck's default batches are padding-free (``training.padding_free``); ``loradeck+padded``
measures it with padded batches like the notebook's.

    python -m bench.train_bench --mode quick                 # CPU, demo:tiny, demo rows
    python -m bench.train_bench --mode full --shape mistral-7b --peak-tflops 989   # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common, workload

NAME = "train_bench"
TWEAKS = ("padding_free", "padded", "packing", "eager", "sdpa", "flash", "no_gc", "reentrant",
          "liger")
# bf16 dense tensor-core peaks (TFLOPS); the first name contained in the GPU's name wins
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}
ABLATIONS = ("notebook", "notebook+padding_free", "notebook+packing", "notebook+eager",
             "notebook+no_gc", "notebook+reentrant", "loradeck", "loradeck+padded",
             "loradeck+packing")
MODES = {
    "quick": dict(device="cpu", shapes=["demo:tiny"], data="demo", rows=200, steps=8, warmup=2,
                  repeats=3, batch=4, accum=4, max_length=1024, arms=["notebook", "loradeck"]),
    "full": dict(device="cuda", shapes=["qwen2-0.5b", "qwen2-1.5b", "mistral-7b"],
                 data="synthetic", rows=3000, steps=30, warmup=5, repeats=3, batch=4, accum=4,
                 max_length=1024, arms=["notebook", "loradeck"]),
}


# ---- arms -----------------------------------------------------------------------------------

def parse_arm(arm: str) -> tuple[str, list[str], list[str]]:
    """``base+tweak+tweak:key=value,key=value`` -> (base, tweaks, overrides)."""
    head, _, tail = arm.partition(":")
    base, *tweaks = head.split("+")
    if base not in ("notebook", "loradeck"):
        raise SystemExit(f"arm {arm!r}: starts with notebook or loradeck")
    bad = [t for t in tweaks if t not in TWEAKS]
    if bad:
        raise SystemExit(f"arm {arm!r}: unknown change {bad[0]!r}; known: {', '.join(TWEAKS)}")
    overrides = [o for o in tail.split(",") if o] if tail else []
    if base == "notebook" and "padded" in tweaks:
        raise SystemExit(f"arm {arm!r}: the notebook recipe is padded already")
    if overrides and base != "loradeck":
        raise SystemExit(f"arm {arm!r}: key=value changes apply to loradeck arms only")
    return base, tweaks, overrides


LORADECK_TWEAKS = {"padding_free": "training.padding_free=true",
                   "padded": "training.padding_free=false",
                   "packing": "training.packing=true", "eager": "model.attn_implementation=eager",
                   "sdpa": "model.attn_implementation=sdpa",
                   "flash": "model.attn_implementation=flash_attention_2",
                   "no_gc": "training.gradient_checkpointing=false", "liger": "training.liger=on"}


class TokenCounter:
    """Counts the tokens of every training forward: real (non-pad) and padded positions."""

    def __init__(self) -> None:
        self.real = 0
        self.padded = 0
        self.rows = 0
        self.forwards = 0
        self.handle = None

    def hook(self, module, args, kwargs) -> None:
        if not module.training:
            return
        ids = kwargs.get("input_ids")
        if ids is None and args:
            ids = args[0]
        if ids is None:
            return
        mask = kwargs.get("attention_mask")
        positions = kwargs.get("position_ids")
        self.padded += int(ids.numel())
        self.real += int(mask.sum().item()) if mask is not None else int(ids.numel())
        if mask is None and positions is not None:  # flattened rows: each starts at position 0
            self.rows += int((positions == 0).sum().item())
        else:
            self.rows += int(ids.shape[0])
        self.forwards += 1

    def attach(self, model) -> None:
        if self.handle is None:
            self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)


def _meter_class():
    from transformers import TrainerCallback

    class Meter(TrainerCallback):
        """Hooks the token counter onto the model and stamps the end of every optimizer step."""

        def __init__(self, counter: TokenCounter, cuda: bool, padding_free: bool = False) -> None:
            self.counter = counter
            self.cuda = cuda
            self.padding_free = padding_free
            self.marks: list[tuple[float, int, int, int]] = []

        def _sync(self) -> None:
            if self.cuda:
                import torch

                torch.cuda.synchronize()

        def on_train_begin(self, args, state, control, model=None, train_dataloader=None,
                           **kwargs):
            if model is not None:
                self.counter.attach(model)
            if self.padding_free and train_dataloader is not None:
                collate = getattr(train_dataloader, "collate_fn", None)
                if not hasattr(collate, "padding_free"):
                    raise RuntimeError("padding_free: the training collator has no such switch")
                collate.padding_free = True
            self._sync()
            self.marks = [(time.perf_counter(), 0, 0, 0)]
            return control

        def on_step_end(self, args, state, control, **kwargs):
            self._sync()
            self.marks.append((time.perf_counter(), self.counter.real, self.counter.padded,
                               self.counter.rows))
            return control

    return Meter


def build_notebook(model_path: str, rows: list[dict], out: str, a, tweaks: list[str]):
    from bench import notebook_recipe as nr

    sft: dict[str, Any] = {}
    model_kwargs: dict[str, Any] = {}
    if "packing" in tweaks:
        sft["packing"] = True
    if "no_gc" in tweaks:
        sft["gradient_checkpointing"] = False
    if "reentrant" in tweaks:
        sft["gradient_checkpointing_kwargs"] = {"use_reentrant": True}
    if "liger" in tweaks:
        sft["use_liger_kernel"] = True
    for name, impl in (("eager", "eager"), ("sdpa", "sdpa"), ("flash", "flash_attention_2")):
        if name in tweaks:
            model_kwargs["attn_implementation"] = impl
    return nr.build_trainer(model_path, rows, out, max_steps=a.steps, batch_size=a.batch,
                            grad_accum=a.accum, max_length=a.max_length, device=a.device, quantize=a.quant != "none", sft_overrides=sft,
                            model_kwargs=model_kwargs)


def loradeck_config(model_path: str, data_path: str, a, overrides: list[str]):
    from loradeck.engine import config as cfg

    base = [f"model.name={model_path}", f"dataset.path={data_path}",
            f"model.quantization={a.quant}", f"training.max_steps={a.steps}",
            f"training.batch_size={a.batch}", f"training.grad_accum={a.accum}",
            f"training.max_length={a.max_length}", f"training.device={a.device}",
            f"training.eval_steps={10 ** 6}", f"training.save_steps={10 ** 6}"]
    return cfg.from_overrides(base + overrides)


# ---- one measured run (worker) --------------------------------------------------------------

def peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)


def measure(a) -> dict[str, Any]:
    """Build the arm's trainer, train, and return the figures of this one run."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    base, tweaks, overrides = parse_arm(a.arm)
    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA GPU is available")
    model_path = str(workload.model_dir(a.model, a.device))
    tok = AutoTokenizer.from_pretrained(model_path)
    rows = workload.rows_for(a.data, tok, a.rows, seed=a.seed)
    from bench.notebook_recipe import format_row

    row_tokens = workload.length_stats(
        [len(x) for x in tok([format_row(r, tok.eos_token) for r in rows])["input_ids"]],
        a.batch, a.max_length)
    counter = TokenCounter()
    # the notebook's collator is switched by the meter; loradeck's by its own config key
    meter = _meter_class()(counter, cuda,
                           padding_free=base == "notebook" and "padding_free" in tweaks)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loradeck-train-bench-") as tmp:
        data_path = str(workload.write_jsonl(rows, Path(tmp) / "rows.jsonl"))
        if base == "notebook":
            trainer = build_notebook(model_path, rows, str(Path(tmp) / "out"), a, tweaks)
            trainer.add_callback(meter)
            trainer.train()
            final_loss = trainer.state.log_history[-1].get("train_loss")
            estimate = None
        else:
            final_loss, estimate = run_loradeck(model_path, data_path, tmp, a, tweaks, overrides,
                                                meter)
    marks = meter.marks
    w = min(a.warmup, len(marks) - 2)
    t0, r0, p0, n0 = marks[w]
    t1, r1, p1, n1 = marks[-1]
    seconds = t1 - t0
    steps = len(marks) - 1 - w
    cfg = AutoConfig.from_pretrained(model_path).to_dict()
    n = workload.matmul_params(cfg.get("text_config") or cfg)
    real_tps = (r1 - r0) / seconds if seconds > 0 else None
    mfu = real_tps * 4 * n / (a.peak_tflops * 1e12) if real_tps and a.peak_tflops else None
    if cuda:
        peak = round(torch.cuda.max_memory_allocated() / 1e9, 3)
        reserved = round(torch.cuda.max_memory_reserved() / 1e9, 3)
    else:
        peak, reserved = peak_rss_gb(), None
    return {
        "arm": a.arm, "model": a.model, "device": a.device, "steps_timed": steps,
        "seconds": round(seconds, 4), "step_seconds": round(seconds / steps, 4) if steps else None,
        "real_tokens": r1 - r0, "padded_tokens": p1 - p0,
        "tokens_per_second": round(real_tps, 2) if real_tps else None,
        "padded_tokens_per_second": round((p1 - p0) / seconds, 2) if seconds > 0 else None,
        "rows_per_second": round((n1 - n0) / seconds, 3) if seconds > 0 else None,
        "pad_share": round(1 - (r1 - r0) / (p1 - p0), 4) if p1 > p0 else None,
        "peak_memory_gb": peak, "peak_reserved_gb": reserved,
        "memory_kind": "cuda max allocated" if cuda else "peak RSS",
        "matmul_params": n, "peak_tflops": a.peak_tflops,
        "mfu": round(mfu, 5) if mfu is not None else None,
        "final_loss": final_loss, "wall_seconds": round(time.perf_counter() - started, 2),
        "row_tokens": row_tokens,
        "estimate": estimate,
        "threads": torch.get_num_threads(),
    }


def run_loradeck(model_path: str, data_path: str, tmp: str, a, tweaks: list[str],
                 overrides: list[str], meter) -> tuple[float | None, dict[str, Any] | None]:
    """loradeck's own training pass (loradeck.engine.train.trainer.train_once) in a throwaway run store; its
    final loss and what ``loradeck estimate`` predicts for the config's peak GPU memory (set
    against the measured peak on a GPU)."""
    os.environ["LORADECK_HOME"] = str(Path(tmp) / "home")
    from loradeck.engine.runs.events import EventWriter
    from loradeck.engine.runs.store import RunStore
    from loradeck.engine.train import trainer as engine_trainer

    extra = [LORADECK_TWEAKS[t] for t in tweaks if t in LORADECK_TWEAKS]
    if "reentrant" in tweaks:
        raise SystemExit("loradeck arms always use non-reentrant checkpointing; "
                         "measure +reentrant on the notebook arm")
    config = loradeck_config(model_path, data_path, a, extra + overrides)
    run = RunStore().create(config)
    ctx = engine_trainer.JobContext(run=run, config=config, events=EventWriter(run.events_path))
    outcome = engine_trainer.train_once(ctx, callbacks=(meter,))
    return outcome.train_loss, memory_estimate(model_path, config)


def memory_estimate(model_path: str, config) -> dict[str, Any] | None:
    """loradeck.engine.train.estimate's peak memory for ``config`` on one GPU (None for an unknown shape)."""
    from loradeck.engine.train import estimate

    shape = estimate.shape_for(model_path)
    if shape is None:
        return None
    return estimate.estimate(shape, estimate.Settings.from_config(config)).to_dict()


def cpu_peak_tflops(seconds: float = 1.5) -> float:
    """The fp32 matmul rate this process reaches (TFLOPS), with its current thread count."""
    import torch

    n = 1024
    x, y = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        x @ y
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(4):
            x @ y
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t))
    return round(best / 1e12, 4)


def default_peak(device: str) -> float | None:
    name = common.gpu_name() or ""
    for key, value in PEAK_TFLOPS.items():
        if device == "cuda" and key in name:
            return value
    return None


# ---- orchestration --------------------------------------------------------------------------

def worker_args(a, arm: str, shape: str) -> list[str]:
    return ["--arm", arm, "--model", shape, "--data", a.data, "--rows", str(a.rows),
            "--steps", str(a.steps), "--warmup", str(a.warmup), "--batch", str(a.batch),
            "--accum", str(a.accum), "--max-length", str(a.max_length), "--device", a.device,
            "--quant", a.quant, "--seed", str(a.seed)] + (
        ["--peak-tflops", str(a.peak_tflops)] if a.peak_tflops else [])


def one(a, arm: str, shape: str) -> dict[str, Any]:
    """One measured run: in a worker process, or here with --inline."""
    if a.inline:
        b = argparse.Namespace(**vars(a))
        b.arm, b.model = arm, shape
        return measure(b)
    args = worker_args(a, arm, shape)
    return common.run_worker(f"bench.{NAME}", args, env=common.bench_env(a.threads),
                             timeout=a.timeout)


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    out: dict[str, Any] = {"runs": len(runs), "failed": [r["error"] for r in runs if "error" in r]}
    for key in ("tokens_per_second", "padded_tokens_per_second", "rows_per_second",
                "peak_memory_gb", "peak_reserved_gb", "mfu", "step_seconds", "pad_share"):
        out[key] = common.summary([r.get(key) for r in ok])
    if ok:
        out["matmul_params"] = ok[0]["matmul_params"]
        out["row_tokens"] = ok[0].get("row_tokens")
        out["final_loss"] = [r.get("final_loss") for r in ok]
        out["estimate"] = ok[0].get("estimate")
    return out


def compare(arms: dict[str, dict[str, Any]], baseline: str = "notebook") -> dict[str, Any]:
    """Each arm's median tokens/s and peak memory as a ratio of the baseline's."""
    base = arms.get(baseline) or {}

    def med(agg: dict[str, Any], key: str) -> float | None:
        return (agg.get(key) or {}).get("median")

    out = {}
    for arm, agg in arms.items():
        tps, b_tps = med(agg, "tokens_per_second"), med(base, "tokens_per_second")
        rps, b_rps = med(agg, "rows_per_second"), med(base, "rows_per_second")
        mem, b_mem = med(agg, "peak_memory_gb"), med(base, "peak_memory_gb")
        out[arm] = {"speedup": round(tps / b_tps, 3) if tps and b_tps else None,
                    "rows_speedup": round(rps / b_rps, 3) if rps and b_rps else None,
                    "memory_ratio": round(mem / b_mem, 3) if mem and b_mem else None}
    return out


def run_bench(a, out: str | Path | None = None) -> dict[str, Any]:
    """Every shape and arm, repeats interleaved; with ``out``, the results so far are written
    there after each run (``"partial": true``), so a series cut short keeps what it measured."""
    result = common.result_header(NAME, a.mode, a.argv)
    result["settings"] = {k: getattr(a, k) for k in (
        "device", "data", "rows", "steps", "warmup", "repeats", "batch", "accum", "max_length",
        "quant", "threads", "peak_tflops", "arms")}
    result["peak_tflops"] = a.peak_tflops
    result["peak_source"] = getattr(a, "peak_source", "given or known device peak")
    result["shapes"] = {}
    for shape in a.shapes:
        if shape in workload.SHAPES and not a.inline:  # build once, outside the timed runs
            prep = common.run_worker(f"bench.{NAME}", ["--prepare", "--model", shape,
                                                       "--device", a.device, "--data", a.data,
                                                       "--rows", str(a.rows)],
                                     env=common.bench_env(a.threads), timeout=a.timeout)
            if "error" in prep:
                result["shapes"][shape] = {"error": prep["error"]}
                continue
        runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in a.arms}
        loads = []
        for i in range(a.repeats):
            for arm in a.arms:
                loads.append(common.load_now())
                r = one(a, arm, shape)
                r["repeat"] = i
                runs[arm].append(r)
                print(f"{shape} {arm} #{i + 1}: "
                      + (f"error: {r['error']}" if "error" in r else
                         f"{common.fmt(r['tokens_per_second'])} tok/s, "
                         f"{common.fmt(r['rows_per_second'], 2)} rows/s, "
                         f"{r['peak_memory_gb']} GB, pad {r['pad_share']}"), flush=True)
                arms = {arm: aggregate(rs) for arm, rs in runs.items() if rs}
                result["shapes"][shape] = {"arms": arms, "vs_notebook": compare(arms),
                                           "load_during": common.summary(loads), "raw": runs}
                if out is not None:
                    common.write_json(out, dict(result, partial=True))
    return result


def prepare_only(a) -> dict[str, Any]:
    """Build the shape's model directory (and check the rows) before timing anything."""
    from transformers import AutoTokenizer

    path = workload.model_dir(a.model, a.device)
    tok = AutoTokenizer.from_pretrained(str(path))
    rows = workload.rows_for(a.data, tok, a.rows)
    from bench.notebook_recipe import format_row

    lengths = [len(x) for x in tok([format_row(r, tok.eos_token) for r in rows])["input_ids"]]
    return {"model_dir": str(path), "rows": workload.length_stats(lengths)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.train_bench", description=__doc__.split(
        "\n")[0])
    p.add_argument("--mode", choices=sorted(MODES), default="quick")
    p.add_argument("--shape", dest="shapes", action="append", metavar="MODEL",
                   help="demo:tiny, a shape (" + ", ".join(workload.SHAPES) + ") or a model "
                        "directory; repeat for several (default: the mode's)")
    p.add_argument("--arms", help="comma-separated arms (default: notebook,loradeck)")
    p.add_argument("--ablations", action="store_true",
                   help="measure each fast-default option on its own: " + ", ".join(ABLATIONS))
    p.add_argument("--data", help="demo | synthetic | a JSONL file of instruction rows")
    p.add_argument("--rows", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--accum", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--quant", choices=["4bit", "none"], default="4bit")
    p.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (H100 bf16 "
                   "dense: 989); default: known GPUs, or measured fp32 matmul on a CPU")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--inline", action="store_true", help="measure in this process (tests)")
    p.add_argument("--out", help="result JSON (default bench/results/train_bench-MODE-DEVICE.json)")
    # worker side
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--arm", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def resolve(a) -> argparse.Namespace:
    """Fill unset options from the mode's defaults."""
    mode = MODES[a.mode]
    for key in ("device", "data", "rows", "steps", "warmup", "repeats", "batch", "accum",
                "max_length"):
        if getattr(a, key) is None:
            setattr(a, key, mode[key])
    a.shapes = a.shapes or list(mode["shapes"])
    if a.ablations:
        a.arms = list(ABLATIONS)
    else:
        a.arms = [x for x in a.arms.split(",") if x] if a.arms else list(mode["arms"])
    for arm in a.arms:
        parse_arm(arm)
    if a.threads is None and a.device == "cpu":
        a.threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    a.argv = sys.argv[1:] if argv is None else argv
    if a.worker or a.prepare:
        common.set_threads(int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
        res = prepare_only(a) if a.prepare else measure(a)
        common.write_json(a.result, res)
        return 0
    a = resolve(a)
    common.set_threads(a.threads)
    if a.peak_tflops is None:
        a.peak_tflops = default_peak(a.device)
        if a.peak_tflops is None and a.device == "cpu":
            a.peak_tflops = cpu_peak_tflops()
            a.peak_source = "measured fp32 matmul"
    out = a.out or common.default_out(NAME, a.mode, a.device)
    result = run_bench(a, out)
    common.finish(result, out)
    print(f"wrote {out}")
    print(json.dumps({s: v.get("vs_notebook") for s, v in result["shapes"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
