"""lm-evaluation-harness's ``simple_evaluate`` without its environment report.

Checked against lm-eval 0.4.13. After the tasks run, ``simple_evaluate`` adds to its results
the output of ``git describe`` in the working directory (printing ``fatal: not a git
repository`` into loradeck's output elsewhere) and ``add_env_info``: torch's
``collect_env``, which runs pip, nvidia-smi and more in subprocesses, most of the time of a
small local task on a CPU. loradeck keeps the scores only, so ``quiet`` swaps the two for
functions that record nothing, for the block; the tasks and scores are untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

CHECKED_WITH = {"lm-eval": "0.4.13"}


def _no_git_hash() -> None:
    return None


def _no_env_info(storage: dict[str, Any]) -> None:
    return None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Run lm-eval's evaluator without the git and environment probes."""
    from lm_eval import evaluator

    saved = evaluator.get_git_commit_hash, evaluator.add_env_info
    evaluator.get_git_commit_hash, evaluator.add_env_info = _no_git_hash, _no_env_info
    try:
        yield
    finally:
        evaluator.get_git_commit_hash, evaluator.add_env_info = saved
