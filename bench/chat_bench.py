"""Chat: time to first token and decode tokens/s of loradeck's chat worker against plain
transformers ``generate``, on a merged model and on base + unmerged adapter.

A run is set up once in a throwaway store: an adapter with random (non-zero) LoRA weights saved
as RUN/adapter, then ``loradeck.engine.publish.merge`` writes RUN/merged, the way ``loradeck merge`` does. Arms:

- ``worker-merged`` / ``worker-adapter``: ``loradeck.engine.serve.client.ChatClient`` driving the chat
  worker process (JSON lines), timed on the client side from sending ``generate`` to each
  ``token`` reply;
- ``plain-merged`` / ``plain-adapter``: a worker process of this script that loads the same
  model with transformers (and PEFT) and streams ``generate`` through TextIteratorStreamer,
  timed from applying the chat template to each streamed piece.

Every arm answers the same prompts greedily (temperature 0) with the same max_new_tokens, after
one warm-up request. TTFT: request to first token. Decode tokens/s: (tokens - 1) / (last token
- first token). Load: process start to model ready.

    python -m bench.chat_bench --mode quick                      # CPU, demo:tiny
    python -m bench.chat_bench --mode full --shape qwen2-1.5b    # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common, workload
from loradeck.engine.serve.replies import Failed, Finished, Token

NAME = "chat_bench"
ARMS = ("worker-merged", "plain-merged", "worker-adapter", "plain-adapter")
PROMPTS = ("What is the capital of France?", "한국의 수도는 어디인가요?",
           "Summarise LoRA fine-tuning in one sentence.", "문맥에 있는 두 수를 더하세요: 3, 4")
MODES = {
    "quick": dict(device="cpu", shape="demo:tiny", new_tokens=64, repeats=5),
    "full": dict(device="cuda", shape="qwen2-1.5b", new_tokens=256, repeats=5),
}


# ---- setup: a run with an adapter and its merged model --------------------------------------

def make_run(shape: str, device: str, home: Path) -> dict[str, str]:
    """A run holding a random LoRA adapter and (through loradeck.engine.publish.merge) its merged model."""
    os.environ["LORADECK_HOME"] = str(home)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loradeck.engine import config as cfg
    from loradeck.engine.publish import merge
    from loradeck.engine.runs.store import RunStore

    base = workload.model_dir(shape, device)
    config = cfg.from_overrides([f"model.name={base}", "model.quantization=none",
                                 f"training.device={device}"])
    run = RunStore().create(config, name="chat-bench")
    torch.manual_seed(0)
    cuda = device == "cuda" and torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.bfloat16 if cuda else torch.float32,
        device_map={"": 0 if cuda else "cpu"})
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM",
                      init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():  # small, so that the adapted model stays a sane language model
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.01)
    peft_model.save_pretrained(run.adapter_dir)
    AutoTokenizer.from_pretrained(base).save_pretrained(run.adapter_dir)
    del peft_model, model
    result = merge.merge(run, device=device)
    return {"base": str(base), "adapter": str(run.adapter_dir), "merged": str(result.path),
            "merge_seconds": result.seconds, "merge_check": result.check.line()}


# ---- the loradeck chat worker ---------------------------------------------------------------

def time_stream(replies) -> dict[str, Any]:
    """Consume one reply stream, stamping the request and each token reply."""
    sent = time.perf_counter()
    first = last = None
    pieces = 0
    tokens = 0
    for reply in replies:
        now = time.perf_counter()
        if isinstance(reply, Token):
            first = first if first is not None else now
            last = now
            pieces += 1
        elif isinstance(reply, Finished):
            tokens = reply.tokens
        elif isinstance(reply, Failed):
            raise RuntimeError(reply.message)
    tokens = tokens or pieces
    return _figures(sent, first, last, tokens, pieces)


def _figures(sent: float, first: float | None, last: float | None, tokens: int, pieces: int
             ) -> dict[str, Any]:
    ttft = (first - sent) if first is not None else None
    span = (last - first) if first is not None and last is not None else 0.0
    return {"ttft_s": round(ttft, 5) if ttft is not None else None, "tokens": tokens,
            "pieces": pieces,
            "tokens_per_second": round((tokens - 1) / span, 2) if tokens > 1 and span > 0
            else None,
            "total_s": round(last - sent, 5) if last is not None else None}


def run_worker_arm(target: dict[str, str], adapter: bool, a) -> dict[str, Any]:
    from loradeck.engine.serve.client import ChatClient

    params = {"temperature": 0, "max_new_tokens": a.new_tokens, "repetition_penalty": 1.0}
    started = time.perf_counter()
    with ChatClient() as client:
        info = client.start(target["base"] if adapter else target["merged"],
                            adapter=target["adapter"] if adapter else None,
                            quantization=a.quant if adapter else "none", device=a.device)
        load_s = time.perf_counter() - started
        client.complete([{"role": "user", "content": "warm up"}], params)
        figures = [time_stream(client.generate([{"role": "user", "content": p}], params))
                   for p in _prompts(a.repeats)]
    return {"load_s": round(load_s, 3), "figures": figures, "worker_info": info}


def _prompts(n: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(n)]


# ---- plain transformers generate (worker process of this script) ----------------------------

def plain(a) -> dict[str, Any]:
    """Load with transformers (+ PEFT) and stream greedy generate; the user's plain path."""
    import threading

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    started = time.perf_counter()
    cuda = a.device == "cuda"
    dtype = (torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else
             torch.float16 if cuda else torch.float32)
    adapter = a.arm.endswith("adapter")
    path = a.base if adapter else a.merged
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": {"": 0 if cuda else "cpu"}}
    if adapter and a.quant == "4bit":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tok = AutoTokenizer.from_pretrained(a.adapter if adapter else path)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, a.adapter)
    model.eval()
    # from the process start when spawned (imports included, as for the chat worker)
    load_s = (time.time() - a.spawned_at) if a.spawned_at else time.perf_counter() - started

    def once(prompt: str) -> dict[str, Any]:
        sent = time.perf_counter()
        enc = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                      add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True).to(model.device)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        out: dict[str, Any] = {}

        def gen() -> None:
            with torch.inference_mode():
                out["ids"] = model.generate(**enc, streamer=streamer, do_sample=False,
                                            max_new_tokens=a.new_tokens,
                                            pad_token_id=tok.pad_token_id)

        thread = threading.Thread(target=gen)
        thread.start()
        first = last = None
        pieces = 0
        for text in streamer:
            if text:
                now = time.perf_counter()
                first = first if first is not None else now
                last = now
                pieces += 1
        thread.join()
        tokens = int(out["ids"].shape[1] - enc["input_ids"].shape[1])
        return _figures(sent, first, last, tokens, pieces)

    once("warm up")
    figures = [once(p) for p in _prompts(a.repeats)]
    return {"load_s": round(load_s, 3), "figures": figures}


# ---- orchestration --------------------------------------------------------------------------

def one(a, arm: str, target: dict[str, str]) -> dict[str, Any]:
    if arm.startswith("worker"):
        try:
            return run_worker_arm(target, arm.endswith("adapter"), a)
        except Exception as exc:  # one failing arm keeps the others' figures
            return {"error": f"{type(exc).__name__}: {exc}"}
    args = ["--arm", arm, "--device", a.device, "--new-tokens", str(a.new_tokens),
            "--repeats", str(a.repeats), "--quant", a.quant, "--base", target["base"],
            "--adapter", target["adapter"], "--merged", target["merged"],
            "--spawned-at", repr(time.time())]
    if a.inline:
        b = argparse.Namespace(**vars(a))
        b.arm, b.base, b.adapter, b.merged = arm, target["base"], target["adapter"], \
            target["merged"]
        b.spawned_at = None
        return plain(b)
    return common.run_worker(f"bench.{NAME}", args, env=common.bench_env(a.threads),
                             timeout=a.timeout)


def aggregate(r: dict[str, Any]) -> dict[str, Any]:
    if "error" in r:
        return r
    figs = r["figures"]
    return {"load_s": r["load_s"],
            "ttft_s": common.summary([f["ttft_s"] for f in figs]),
            "tokens_per_second": common.summary([f["tokens_per_second"] for f in figs]),
            "tokens": [f["tokens"] for f in figs]}


def run_bench(a) -> dict[str, Any]:
    result = common.result_header(NAME, a.mode, a.argv)
    result["settings"] = {k: getattr(a, k) for k in ("device", "shape", "new_tokens", "repeats",
                                                     "quant", "threads", "arms")}
    with tempfile.TemporaryDirectory(prefix="loradeck-chat-bench-") as tmp:
        if a.inline:
            target = make_run(a.shape, a.device, Path(tmp) / "home")
        else:
            target = common.run_worker(f"bench.{NAME}", ["--setup", "--shape", a.shape,
                                                         "--device", a.device, "--home",
                                                         str(Path(tmp) / "home")],
                                       env=common.bench_env(a.threads), timeout=a.timeout)
            if "error" in target:
                raise SystemExit(f"setting up the run failed: {target['error']}")
        os.environ["LORADECK_HOME"] = str(Path(tmp) / "home")
        result["setup"] = {k: v for k, v in target.items() if k.startswith("merge")}
        result["load_before"] = common.load_now()
        arms = {}
        for arm in a.arms:
            r = one(a, arm, target)
            arms[arm] = aggregate(r)
            if "error" in r:
                print(f"{arm}: error: {r['error']}", flush=True)
            else:
                print(f"{arm}: ttft {arms[arm]['ttft_s']['median']} s, "
                      f"{arms[arm]['tokens_per_second']['median']} tok/s, "
                      f"load {r['load_s']} s", flush=True)
        result["arms"] = arms
    result["compare"] = _compare(arms)
    return result


def _compare(arms: dict[str, Any]) -> dict[str, Any]:
    def med(arm: str, key: str) -> float | None:
        return ((arms.get(arm) or {}).get(key) or {}).get("median")

    out = {}
    for kind in ("merged", "adapter"):
        w, p = f"worker-{kind}", f"plain-{kind}"
        if med(w, "tokens_per_second") and med(p, "tokens_per_second"):
            out[f"{kind}: worker/plain tokens_per_second"] = round(
                med(w, "tokens_per_second") / med(p, "tokens_per_second"), 3)
            out[f"{kind}: worker-plain ttft_s"] = round(med(w, "ttft_s") - med(p, "ttft_s"), 5)
    if med("worker-merged", "tokens_per_second") and med("worker-adapter", "tokens_per_second"):
        out["worker: merged/adapter tokens_per_second"] = round(
            med("worker-merged", "tokens_per_second") / med("worker-adapter",
                                                            "tokens_per_second"), 3)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.chat_bench",
                                description="chat worker vs plain generate, merged vs adapter")
    workload.add_model_options(p, MODES)
    p.add_argument("--new-tokens", type=int)
    p.add_argument("--repeats", type=int, help="timed prompts per arm")
    p.add_argument("--quant", choices=["none", "4bit"], default="none",
                   help="base weights of the adapter arms (merged is always 16-bit)")
    p.add_argument("--arms", help="comma-separated, from " + ", ".join(ARMS))
    p.add_argument("--threads", type=int)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--inline", action="store_true", help="plain arms in this process (tests)")
    p.add_argument("--out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    p.add_argument("--arm", help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--adapter", help=argparse.SUPPRESS)
    p.add_argument("--merged", help=argparse.SUPPRESS)
    p.add_argument("--spawned-at", type=float, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    a.argv = sys.argv[1:] if argv is None else argv
    if a.worker:
        res = make_run(a.shape, a.device, Path(a.home)) if a.setup else plain(a)
        common.write_json(a.result, res)
        return 0
    mode = MODES[a.mode]
    for key in ("device", "shape", "new_tokens", "repeats"):
        if getattr(a, key) is None:
            setattr(a, key, mode[key])
    a.arms = [x for x in (a.arms or ",".join(ARMS)).split(",") if x]
    bad = [x for x in a.arms if x not in ARMS]
    if bad:
        raise SystemExit(f"unknown arm {bad[0]!r}; known: {', '.join(ARMS)}")
    if a.threads is None and a.device == "cpu":
        a.threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    common.set_threads(a.threads)
    result = run_bench(a)
    out = a.out or common.default_out(NAME, a.mode, a.device)
    common.finish(result, out)
    print(f"wrote {out}")
    print(json.dumps(result["compare"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
