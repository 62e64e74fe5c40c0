"""Preparing a large dataset: the row-by-row way loradeck used before (the whole file read into
a list, each row rendered and tokenized alone, ``Dataset.from_list``) against today's
``prep.prepare`` (rows streamed into memory-mapped Arrow, rendered and tokenized in batches by
``datasets.map``, in parallel processes), side by side in one run on the same file.

Each arm runs in a fresh worker process: wall time, rows per second and the worker's peak RSS.
The full mode prepares 1,000,000 short instruction rows with SmolLM2-135M-Instruct's tokenizer
(converted once from the tests' GGUF file); ``--quick`` 20,000 rows with demo:tiny's (what the
tests run). Results go to bench/results/prep_bench-<mode>-cpu.json; docs/benchmarks.md has them.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import bench_env, default_out, finish, fmt, result_header, run_worker

ARMS = ("row_by_row", "streamed")


def write_rows(path: Path, n: int) -> Path:
    """``n`` short instruction rows (one JSON object per line)."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"instruction": f"What is {i} plus {i % 97}?",
                                 "response": f"{i} plus {i % 97} is {i + i % 97}."}) + "\n")
    return path


def tokenizer_dir(quick: bool) -> Path:
    from bench.gguf_bench import model_dir

    return model_dir(quick)


def row_by_row(config: Any, tokenizer: Any) -> int:
    """What prepare did before: read everything, then one row at a time."""
    from datasets import Dataset

    from loradeck.engine.data import files, templates

    loaded = files.load_section(config.dataset)
    renderer = templates.Renderer(tokenizer, config.dataset.template)
    records = []
    for example in loaded.examples:
        pieces = renderer.segments(example)
        text = "".join(piece for piece, _ in pieces)
        spans, at = [], 0
        for piece, trained in pieces:
            if trained:
                spans.append((at, at + len(piece)))
            at += len(piece)
        enc = tokenizer(text, return_offsets_mapping=True)
        mask = [int(e > s and any(a <= s < b for a, b in spans))
                for s, e in enc["offset_mapping"]]
        records.append({"input_ids": list(enc["input_ids"]), "assistant_masks": mask})
    return len(Dataset.from_list(records))


def worker(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from loradeck.engine import config as cfg
    from loradeck.engine.data import prep

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    config = cfg.validate({"dataset": {"path": args.data, "eval_fraction": 0.01},
                           "training": {"max_length": 256}})
    started = time.perf_counter()
    if args.arm == "row_by_row":
        rows = row_by_row(config, tokenizer)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            prepared = prep.prepare(config, tokenizer, run_dir=Path(tmp))
            rows = prepared.stats["rows"]
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"arm": args.arm, "rows": rows, "seconds": round(seconds, 2),
            "rows_per_second": round(rows / seconds, 1),
            "peak_rss_gb": round(peak_kb / 1e6, 3),
            "worker_children_peak_rss_gb": round(children_kb / 1e6, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.prep_bench", description=__doc__.split(
        "\n")[0])
    p.add_argument("--quick", action="store_true", help="20,000 rows, demo:tiny's tokenizer")
    p.add_argument("--rows", type=int, default=None, help="rows in the file (default 1M, or "
                   "20k with --quick)")
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        Path(args.result).write_text(json.dumps(worker(args)), encoding="utf-8")
        return 0
    mode = "quick" if args.quick else "full"
    rows = args.rows or (20_000 if args.quick else 1_000_000)
    result = result_header("prep_bench", mode, argv)
    result["rows"] = rows
    with tempfile.TemporaryDirectory(prefix="loradeck-prep-bench-") as tmp:
        data = write_rows(Path(tmp) / "rows.jsonl", rows)
        result["file_mb"] = round(data.stat().st_size / 1e6, 1)
        tok = tokenizer_dir(args.quick)
        result["tokenizer"] = str(tok)
        for arm in ARMS:
            result[arm] = run_worker("bench.prep_bench", ["--arm", arm, "--data", str(data),
                                                          "--tokenizer", str(tok)],
                                     env=bench_env(), timeout=7200)
    before, after = result["row_by_row"], result["streamed"]
    if "seconds" in before and "seconds" in after:
        result["time_ratio"] = round(after["seconds"] / before["seconds"], 3)
        result["peak_rss_ratio"] = round(after["peak_rss_gb"] / before["peak_rss_gb"], 3)
    out = finish(result, args.out or default_out("prep_bench", mode, "cpu"))
    for arm in ARMS:
        r = result[arm]
        print(f"{arm:>10}: {fmt(r.get('seconds'), 1)} s, {fmt(r.get('rows_per_second'), 0)} "
              f"rows/s, peak RSS {fmt(r.get('peak_rss_gb'), 2)} GB {r.get('error', '')}")
    print(f"time ratio (streamed / row by row): {result.get('time_ratio')}; peak RSS ratio: "
          f"{result.get('peak_rss_ratio')}  -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
