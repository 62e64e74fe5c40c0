"""Library log lines that are noise to a loradeck user, dropped where they are logged (kept
with LORADECK_DEBUG). Installing the filters imports nothing: a logger can be configured
before its library creates it.

- bitsandbytes (checked with 0.50.2), on a CPU with AVX512-BF16, warns at import that it
  could not load an optional kernel from the ``kernels`` package ("Failed to load CPU
  gemm_4bit_forward from kernels-community ..."); its own CPU code is used instead, and the
  line reached every CLI command's output and train.log.
"""

from __future__ import annotations

import logging
import os

DROPPED: dict[str, tuple[str, ...]] = {
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels",),
}


class _Drop(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def install() -> None:
    """Drop the noise lines (once per process; not with LORADECK_DEBUG)."""
    if os.environ.get("LORADECK_DEBUG"):
        return
    for name, starts in DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(starts))
