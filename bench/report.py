"""Render benchmark result files as the Markdown tables docs/benchmarks.md quotes.

    python -m bench.report bench/results/train_bench-quick-cpu.json [more.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.common import fmt


def _med(d: dict[str, Any] | None, key: str) -> float | None:
    return ((d or {}).get(key) or {}).get("median")


def _range(d: dict[str, Any] | None, key: str, digits: int = 1) -> str:
    s = (d or {}).get(key) or {}
    if s.get("median") is None:
        return "-"
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}–{fmt(s['max'], digits)})"


def head(r: dict[str, Any]) -> str:
    m = r["machine"]
    v = m["versions"]
    vers = ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "trl", "peft",
                                              "bitsandbytes", "textual") if v.get(k))
    absent = [k for k in ("liger-kernel", "flash-attn") if not v.get(k)]
    return (f"- command: `{r['command']}`\n"
            f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB"
            + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
            + f"; OMP_NUM_THREADS={m.get('omp_num_threads')}\n"
            f"- load average (1/5/15 min) at start {m['load_avg']}, at end {r.get('load_avg_end')}"
            f"; taken {r['started']}"
            + (" (**partial**: the series was cut short)" if r.get("partial") else "") + "\n"
            f"- versions: python {v['python']}, {vers}"
            + (f"; not installed: {', '.join(absent)}" if absent else "") + "\n")


def train(r: dict[str, Any]) -> str:
    out = [head(r), f"- settings: {json.dumps(r['settings'])}; MFU peak "
                    f"{r.get('peak_tflops')} TFLOPS ({r.get('peak_source')})\n"]
    for shape, s in r["shapes"].items():
        if "error" in s:
            out.append(f"\n{shape}: error: {s['error']}\n")
            continue
        rows = next((a.get("row_tokens") for a in s["arms"].values() if a.get("row_tokens")),
                    None)
        out.append(f"\n**{shape}** (load during runs: median {fmt(_med(s, 'load_during'), 2)})"
                   + (f"; rows in notebook format, tokens: {json.dumps(rows)}" if rows else "")
                   + "\n\n| arm | real tokens/s (min–max) | padded tokens/s | rows/s | pad share | "
                   "peak memory GB | MFU | vs notebook: tokens/s, rows/s, memory |\n"
                   "|---|---|---|---|---|---|---|---|\n")
        for arm, agg in s["arms"].items():
            cmp = s["vs_notebook"].get(arm) or {}
            mfu = _med(agg, "mfu")
            out.append(f"| {arm} | {_range(agg, 'tokens_per_second')} | "
                       f"{fmt(_med(agg, 'padded_tokens_per_second'))} | "
                       f"{fmt(_med(agg, 'rows_per_second'), 2)} | "
                       f"{fmt(_med(agg, 'pad_share'), 3)} | "
                       f"{fmt(_med(agg, 'peak_memory_gb'), 3)} | "
                       f"{'-' if mfu is None else f'{100 * mfu:.2f}%'} | "
                       f"{fmt(cmp.get('speedup'), 2)}x, {fmt(cmp.get('rows_speedup'), 2)}x, "
                       f"{fmt(cmp.get('memory_ratio'), 2)}x |"
                       + (f" failed: {agg['failed'][0][:80]}" if agg.get("failed") else "")
                       + "\n")
        out.extend(estimate_lines(s["arms"], r["settings"].get("device")))
    return "".join(out)


def estimate_lines(arms: dict[str, Any], device: str | None) -> list[str]:
    """loradeck's memory estimate beside the measured peak, for each loradeck arm on a GPU
    (on a CPU the measured figure is the process's resident set, not comparable)."""
    if device != "cuda":
        return []
    out = []
    for arm, agg in arms.items():
        est = agg.get("estimate")
        if not est:
            continue
        out.append(f"- {arm}: `loradeck estimate` {est['total_gb']:.2f} GB (weights "
                   f"{est['weights_gb']:.2f}, activations {est['activations_gb']:.2f}, logits "
                   f"{est['logits_gb']:.2f}, CUDA context {est['context_gb']:.2f}) against "
                   f"measured peak allocated {fmt(_med(agg, 'peak_memory_gb'), 2)} GB, reserved "
                   f"{fmt(_med(agg, 'peak_reserved_gb'), 2)} GB\n")
    return ["\n"] + out if out else []


def chat(r: dict[str, Any]) -> str:
    out = [head(r), f"- settings: {json.dumps(r['settings'])}\n",
           f"- setup: {r['setup'].get('merge_check')}\n\n",
           "| arm | load s | TTFT ms (min–max) | decode tokens/s (min–max) |\n|---|---|---|---|\n"]
    for arm, agg in r["arms"].items():
        if "error" in agg:
            out.append(f"| {arm} | error: {agg['error'][:80]} | | |\n")
            continue
        t = agg["ttft_s"]
        ttft = (f"{1000 * t['median']:.1f} ({1000 * t['min']:.1f}–{1000 * t['max']:.1f})"
                if t.get("median") is not None else "-")
        out.append(f"| {arm} | {fmt(agg['load_s'], 2)} | {ttft} | "
                   f"{_range(agg, 'tokens_per_second')} |\n")
    out.append("\n" + ", ".join(f"{k}: {v}" for k, v in r.get("compare", {}).items()) + "\n")
    return "".join(out)


def app(r: dict[str, Any]) -> str:
    out = [head(r), f"- settings: {json.dumps(r['settings'])}\n"]
    ff = r.get("first_frame")
    if ff:
        out.append(f"\nFirst frame (load before: {r.get('load_before_first_frame')}):\n\n"
                   "| app | median s (min–max) |\n|---|---|\n"
                   f"| loradeck | {_range(ff, 'loradeck', 3)} |\n"
                   f"| bare Textual app | {_range(ff, 'bare', 3)} |\n"
                   f"\nratio {ff['ratio']} (target <= 1.5: {'met' if ff['met'] else 'not met'})\n")
    lat = r.get("latency")
    if lat and "error" not in lat:
        out.append(f"\nKeystroke to frame (load before: {r.get('load_before_latency')}):\n\n"
                   "| scenario | n | p50 ms | p95 ms | max ms | over 50 ms |\n"
                   "|---|---|---|---|---|---|\n")
        rows = [(f"loradeck: {k}", v) for k, v in lat["loradeck"].items()
                if isinstance(v, dict) and "p50_ms" in v]
        rows += [(f"bare app: {k}", v) for k, v in lat["bare"].items()
                 if isinstance(v, dict) and "p50_ms" in v]
        for name, v in rows:
            out.append(f"| {name} | {v['n']} | {v['p50_ms']} | {v['p95_ms']} | {v['max_ms']} | "
                       f"{v['over_50ms']} |\n")
        fed = lat["bare"].get("stream_tokens_per_second_fed")
        if fed is not None:
            out.append(f"\nbare app stream fed at {fed} tokens/s\n")
        out.append(f"\nload seen: {json.dumps(lat['loradeck'].get('load'))}\n"
                   f"worst under load {lat['worst_under_load_ms']} ms (target <= 50 ms: "
                   f"{'met' if lat['met'] else 'not met'})\n")
    elif lat:
        out.append(f"\nlatency: error: {lat['error']}\n")
    return "".join(out)


def overhead(r: dict[str, Any]) -> str:
    out = [head(r), f"- settings: {json.dumps(r['settings'])}\n\n",
           "| arm | end to end s (min–max) | training loop s (min–max) |\n|---|---|---|\n"]
    for arm, agg in r["arms"].items():
        out.append(f"| {arm} | {_range(agg, 'wall_s', 2)} | {_range(agg, 'train_runtime_s', 2)} |"
                   + (f" failed: {agg['failed'][0][:80]}" if agg.get("failed") else "") + "\n")
    o = r["overhead"]
    out.append(f"\nloradeck / plain: training loop {o['train_loop_ratio']}, end to end "
               f"{o['end_to_end_ratio']}\n")
    return "".join(out)


RENDER = {"train_bench": train, "chat_bench": chat, "app_bench": app,
          "overhead_bench": overhead}


def render(path: str | Path) -> str:
    r = json.loads(Path(path).read_text(encoding="utf-8"))
    return f"### {Path(path).name}\n\n" + RENDER[r["bench"]](r)


def main(argv: list[str] | None = None) -> int:
    paths = (sys.argv[1:] if argv is None else argv) or sorted(
        str(p) for p in (Path(__file__).parent / "results").glob("*.json"))
    for p in paths:
        print(render(p))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
