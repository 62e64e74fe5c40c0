"""Free disk space: measure it, refuse work that would not fit, size checkpoints (light).

GB here are 1e9 bytes. ``LORADECK_FAKE_FREE_GB`` replaces the measured free space (tests use it
to simulate a full disk).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from loradeck.engine.errors import LoradeckError

FAKE_ENV = "LORADECK_FAKE_FREE_GB"
SMALL_FILES_GB = 0.05  # tokenizer, configs, trainer state, RNG state of one checkpoint


def _existing(path: str | Path) -> Path:
    """``path`` or its nearest existing parent (the run store may not exist yet)."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_gb(path: str | Path) -> float:
    """Free space in GB on the disk holding ``path`` ($LORADECK_FAKE_FREE_GB when set)."""
    fake = os.environ.get(FAKE_ENV)
    if fake:
        try:
            return float(fake)
        except ValueError:
            raise LoradeckError(f"must be a number of GB (got {fake!r})", kind="usage",
                                where=FAKE_ENV, hint=f"unset {FAKE_ENV} or give e.g. 0.5") from None
    return shutil.disk_usage(_existing(path)).free / 1e9


def total_gb(path: str | Path) -> float:
    """Size in GB of the disk holding ``path``."""
    return shutil.disk_usage(_existing(path)).total / 1e9


def check_free(path: str | Path, need_gb: float, what: str, *, hint: str | None = None) -> float:
    """Raise a ``disk`` LoradeckError unless ``need_gb`` is free at ``path``; returns free GB."""
    free = free_gb(path)
    if free < need_gb:
        raise LoradeckError(
            f"not enough free disk for {what}: about {need_gb:.2f} GB needed, {free:.2f} GB free",
            kind="disk", where=str(path),
            hint=hint or "free some space (old runs, cached models), or set LORADECK_HOME to a "
                         "larger disk")
    return free


def estimate_checkpoint_gb(trainable_params: int, *, optimizer: bool = True,
                           param_bytes: int = 4) -> float:
    """Disk one checkpoint takes: adapter weights (fp32 by default), the two AdamW moments in
    fp32 when ``optimizer``, and the small files next to them."""
    per_param = param_bytes + (8 if optimizer else 0)
    return round(trainable_params * per_param / 1e9 + SMALL_FILES_GB, 4)


def estimate_run_gb(trainable_params: int, save_total_limit: int = 3) -> float:
    """Disk a whole run needs: ``save_total_limit`` checkpoints plus the one being written
    before the oldest is deleted, and the final adapter."""
    ckpt = estimate_checkpoint_gb(trainable_params)
    adapter = estimate_checkpoint_gb(trainable_params, optimizer=False)
    return round(ckpt * (save_total_limit + 1) + adapter, 4)


def estimate_merged_gb(total_params: int, dtype_bytes: int = 2) -> float:
    """Disk the merged 16-bit model takes."""
    return round(total_params * dtype_bytes / 1e9 + SMALL_FILES_GB, 3)
