"""Did it forget? Standard benchmarks through lm-evaluation-harness (``loradeck[eval]``), run
on the base and the tuned model with the same ``limit``, side by side. ``task_path`` adds a
folder of task YAML files (a task over a local JSONL file works offline).

lm-eval is imported here only, when tasks are asked for.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from collections.abc import Callable, Sequence
from typing import Any

from loradeck.engine.errors import LoradeckError

PREFERRED = ("acc_norm,none", "acc,none", "exact_match,none", "f1,none")


def headline(metrics: dict[str, Any]) -> tuple[str, float] | None:
    """The one figure of a task's results that the table shows (acc_norm, else acc...)."""
    for key in PREFERRED:
        if isinstance(metrics.get(key), (int, float)):
            return key.split(",")[0], float(metrics[key])
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and "stderr" not in key and key != "alias":
            return key.split(",")[0], float(value)
    return None


@functools.cache
def task_manager(task_path: str | None) -> Any:
    """lm-eval's task index (with ``task_path``'s tasks), built once per process: it reads
    every task YAML lm-eval ships."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise LoradeckError("--tasks needs lm-evaluation-harness", kind="config",
                            where="--tasks", hint="pip install 'loradeck[eval]'") from None
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return TaskManager(include_path=task_path) if task_path else TaskManager()


def check_tasks(tasks: Sequence[str], task_path: str | None) -> None:
    """Refuse an unknown task name in one line, before any model loads."""
    known = set(task_manager(task_path).all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise LoradeckError(f"unknown lm-eval task {unknown[0]!r}", kind="usage",
                            where="--tasks", hint="see lm-eval's task list, or give a folder "
                                                  "of task YAML files with --task-path")


def run_tasks(models: dict[str, Callable[[], Any]], tasks: Sequence[str], *, limit: int | None,
              task_path: str | None, batch_size: int,
              say: Callable[[str], None]) -> dict[str, Any]:
    """Each task on each model; ``models`` maps a name to a context manager factory giving
    (model, tokenizer). Returns {"models": [...], "scores": {task: {model: value}},
    "metric": {task: name}, "limit": limit}."""
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    from loradeck.engine.patches import lm_eval_quiet

    manager = task_manager(task_path)
    scores: dict[str, dict[str, float | None]] = {t: {} for t in tasks}
    metric: dict[str, str] = {}
    for name, opened in models.items():
        say(f"lm-eval: {', '.join(tasks)} on {name}" + (f" (limit {limit})" if limit else ""))
        with opened() as (model, tokenizer):
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            # its progress bars go nowhere: progress is loradeck's own lines
            with lm_eval_quiet.quiet(), contextlib.redirect_stderr(io.StringIO()):
                out = evaluator.simple_evaluate(model=lm, tasks=list(tasks), limit=limit,
                                                task_manager=manager, log_samples=False,
                                                bootstrap_iters=0, verbosity="ERROR")
        for task in tasks:
            found = headline((out or {}).get("results", {}).get(task, {}))
            scores[task][name] = None if found is None else round(found[1], 4)
            if found:
                metric[task] = found[0]
    return {"models": list(models), "scores": scores, "metric": metric, "limit": limit}
