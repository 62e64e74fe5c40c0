"""What every benchmark shares: machine description, statistics, worker processes, JSON results.

Benchmarks run each measurement in a fresh worker process (``python -m bench.X --worker ...``)
so peak memory and start-up costs are those of one run, with thread counts fixed through the
environment. Light module: nothing heavy is imported at module level.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PACKAGES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets",
            "textual", "liger-kernel", "flash-attn")


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide the figures (None when absent)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str:
    """The CPU model name as lscpu reports it."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def gpu_name() -> str | None:
    """The first GPU's name through nvidia-smi (no torch import), or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    name = out.stdout.strip().splitlines()
    return name[0].strip() if out.returncode == 0 and name else None


def machine() -> dict[str, Any]:
    """Where a figure was taken: CPU, cores, memory, GPU, load now, thread setting, versions."""
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError):
        mem_gb = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "gpu": gpu_name(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
        "versions": versions(),
    }


def load_now() -> float:
    """The one-minute load average."""
    return round(os.getloadavg()[0], 2)


def median(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 6) if vals else None


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), nearest-rank on the sorted values."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    k = max(0, min(len(vals) - 1, int(round(q / 100 * (len(vals) - 1)))))
    return vals[k]


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min, max and the runs of a repeated measurement."""
    vals = [v for v in values if v is not None]
    return {"median": median(vals), "min": min(vals) if vals else None,
            "max": max(vals) if vals else None, "runs": vals}


def bench_env(threads: int | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for worker processes: offline, this checkout importable, threads fixed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                     else "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if threads:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[key] = str(threads)
    env.pop("HF_TOKEN", None)
    env.pop("HUGGING_FACE_HUB_TOKEN", None)
    if extra:
        env.update(extra)
    return env


def set_threads(threads: int | None) -> None:
    """Fix the thread count of this process (before torch is imported) and its children."""
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)


def run_worker(module: str, args: list[str], *, env: dict[str, str] | None = None,
               timeout: float = 1800) -> dict[str, Any]:
    """Run ``python -m MODULE --worker ARGS --result FILE`` and return the JSON it wrote.

    A failed worker gives ``{"error": last lines of its output}`` rather than raising, so one
    failing configuration does not lose the others' figures.
    """
    with tempfile.TemporaryDirectory(prefix="loradeck-bench-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", module, "--worker", *args, "--result", str(result)]
        try:
            proc = subprocess.run(cmd, env=env or bench_env(), cwd=str(ROOT),
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        if proc.returncode != 0 or not result.is_file():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-6:]
            return {"error": " | ".join(tail) or f"exit status {proc.returncode}"}
        return json.loads(result.read_text(encoding="utf-8"))


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n",
                 encoding="utf-8")
    return p


def default_out(name: str, mode: str, device: str) -> Path:
    return RESULTS / f"{name}-{mode}-{device}.json"


def result_header(name: str, mode: str, argv: list[str] | None = None) -> dict[str, Any]:
    """The common head of every result file: what ran, where, when, under what load."""
    argv = sys.argv[1:] if argv is None else argv
    return {
        "bench": name,
        "mode": mode,
        "command": "python -m bench." + name + (" " + shlex.join(argv) if argv else ""),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine(),
    }


def finish(result: dict[str, Any], out: str | Path) -> Path:
    """Record the load at the end and write the result file."""
    result["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    return write_json(out, result)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"
