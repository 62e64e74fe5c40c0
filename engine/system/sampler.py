"""What the machine is doing while a job runs: GPU use through NVML (nvidia-ml-py), or CPU and
memory use through psutil on a machine without a GPU. A job writes one ``system`` event every
few seconds, so the history survives a reattach like everything else in the run directory.

Light module: psutil, and pynvml imported inside the functions.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import psutil

INTERVAL_ENV = "LORADECK_SYSTEM_EVERY_S"
DEFAULT_INTERVAL_S = 5.0
GB = 1e9


def _visible(count: int) -> list[int]:
    """NVML indexes of the GPUs this process may use (CUDA_VISIBLE_DEVICES, when numeric)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    picked = [int(v) for v in visible.split(",") if v.strip().isdigit()]
    return [i for i in picked if i < count]


def gpu_sample() -> list[dict[str, Any]] | None:
    """Per GPU: utilisation %, memory used and total (GB), temperature (°C) and power (W);
    None where NVML is missing or finds no GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no nvidia-ml-py, no driver, no GPU
        return None
    try:
        out = []
        for i in _visible(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            row: dict[str, Any] = {
                "index": i, "util": pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                "mem_used_gb": round(mem.used / GB, 2), "mem_total_gb": round(mem.total / GB, 2)}
            for key, read in (("temp_c", lambda h: pynvml.nvmlDeviceGetTemperature(
                    h, pynvml.NVML_TEMPERATURE_GPU)),
                              ("power_w", lambda h: round(pynvml.nvmlDeviceGetPowerUsage(h)
                                                          / 1000, 1))):
                try:
                    row[key] = read(handle)
                except Exception:  # not every board reports it
                    row[key] = None
            out.append(row)
        return out or None
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def cpu_sample() -> dict[str, Any]:
    """CPU use (% of one core, summed over cores, as top shows it), memory used and total, and
    the job's own resident memory."""
    vm = psutil.virtual_memory()
    return {"cpu_percent": round(psutil.cpu_percent(interval=None) * psutil.cpu_count(), 1),
            "ram_used_gb": round((vm.total - vm.available) / GB, 2),
            "ram_total_gb": round(vm.total / GB, 2), "process_ram_gb": process_rss_gb()}


def sample() -> dict[str, Any]:
    """One ``system`` event's fields: ``gpus`` on a GPU machine, else the CPU's figures."""
    gpus = gpu_sample()
    return {"gpus": gpus} if gpus else cpu_sample()


def process_rss_gb() -> float:
    """This process's resident memory in GB."""
    return round(psutil.Process().memory_info().rss / GB, 3)


def describe(ev: dict[str, Any]) -> str:
    """A sample as one line: ``GPU0 87% · 21.3/24.0 GB · 71°C · 285 W`` or
    ``CPU 143% · RAM 3.2/25.3 GB``."""
    gpus = ev.get("gpus")
    if gpus:
        parts = []
        for g in gpus:
            text = f"GPU{g.get('index', 0)} {g.get('util', 0)}% · {g.get('mem_used_gb', 0):.1f}/" \
                   f"{g.get('mem_total_gb', 0):.1f} GB"
            if g.get("temp_c") is not None:
                text += f" · {g['temp_c']}°C"
            if g.get("power_w") is not None:
                text += f" · {g['power_w']:.0f} W"
            parts.append(text)
        return "  ".join(parts)
    if "cpu_percent" in ev:
        return (f"CPU {ev['cpu_percent']:.0f}% · RAM {ev.get('ram_used_gb', 0):.1f}/"
                f"{ev.get('ram_total_gb', 0):.1f} GB")
    return ""


def utilisation(ev: dict[str, Any]) -> float | None:
    """The sample's one busy figure for a sparkline: mean GPU util, else CPU %."""
    gpus = ev.get("gpus")
    if gpus:
        return sum(float(g.get("util") or 0) for g in gpus) / len(gpus)
    value = ev.get("cpu_percent")
    return float(value) if isinstance(value, (int, float)) else None


def memory_used(ev: dict[str, Any]) -> float | None:
    """GPU memory used (summed over GPUs), else RAM used, in GB."""
    gpus = ev.get("gpus")
    if gpus:
        return sum(float(g.get("mem_used_gb") or 0) for g in gpus)
    value = ev.get("ram_used_gb")
    return float(value) if isinstance(value, (int, float)) else None


class Sampler:
    """A daemon thread that emits a ``system`` event at once, then every ``interval`` s."""

    def __init__(self, events: Any, interval: float | None = None) -> None:
        self.events = events
        self.interval = interval if interval is not None else float(
            os.environ.get(INTERVAL_ENV) or DEFAULT_INTERVAL_S)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loradeck-system-sampler",
                                        daemon=True)

    def start(self) -> Sampler:
        psutil.cpu_percent(interval=None)  # the first reading only sets the baseline
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                self.events.emit("system", **sample())
            except Exception:  # a sample is never worth a job
                pass
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
