"""NVIDIA GPUs as nvidia-smi reports them, without torch: the one place its output is parsed."""

from __future__ import annotations

import os
import shutil
import subprocess

TIMEOUT_S = 20


def smi_query(*fields: str) -> list[list[str]]:
    """One row per GPU with the asked ``--query-gpu`` fields (no units); [] without nvidia-smi
    or when it fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(fields)}",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=TIMEOUT_S, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[cell.strip() for cell in line.split(",")] for line in out.strip().splitlines()]
    return [r for r in rows if len(r) == len(fields)]


def visible_count() -> int:
    """NVIDIA GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else nvidia-smi's."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len(smi_query("index"))


def visible_ids() -> list[str]:
    """The ids of the NVIDIA GPUs this process may use (CUDA_VISIBLE_DEVICES's entries when
    set, else nvidia-smi's indexes): what a queued run's CUDA_VISIBLE_DEVICES is cut from."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    return [row[0] for row in smi_query("index") if row]


def free_memory_gb() -> float | None:
    """Free memory of the first GPU in GB (10^9 bytes); None without one."""
    rows = smi_query("memory.free")
    try:
        return round(float(rows[0][0]) * 1024**2 / 1e9, 1) if rows else None
    except ValueError:
        return None


def names_and_driver() -> tuple[list[str], str | None]:
    """GPU names and the driver version."""
    rows = smi_query("name", "driver_version")
    return [r[0] for r in rows], (rows[0][1] if rows else None)
