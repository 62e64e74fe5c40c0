"""Which GPUs a queued run gets: ``queue.gpus_per_run`` of the GPUs no other queued run holds
(all of them by default); on a machine without GPUs, one run at a time.

Light module: the standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable


def free(all_gpus: list[str], held: Iterable[list[str] | None]) -> list[str]:
    """The GPUs no running entry holds, in order."""
    taken = {g for gpus in held for g in (gpus or [])}
    return [g for g in all_gpus if g not in taken]


def assign(all_gpus: list[str], held: list[list[str] | None], per_run: int | str,
           running: int) -> list[str] | None:
    """The GPUs for the next run, or None when it must wait. Without GPUs: [] when nothing
    runs (one run at a time), else None."""
    if not all_gpus:
        return [] if running == 0 else None
    want = len(all_gpus) if per_run == "all" else int(per_run)
    if want > len(all_gpus):
        want = len(all_gpus)
    available = free(all_gpus, held)
    return available[:want] if len(available) >= want else None
