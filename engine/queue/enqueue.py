"""Add runs to the queue: each checked as ``train`` checks it, then its run directory made
(phase queued), then the entries written in one transaction, then a runner woken (unless the
queue is stopped). What ``loradeck queue add`` and the app's "add to queue" share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loradeck.engine import config as cfg
from loradeck.engine.enums import QueueState
from loradeck.engine.queue import runner
from loradeck.engine.queue.store import QueueStore
from loradeck.engine.runs.store import Run, RunStore


@dataclass
class Queued:
    """Runs just queued, in order, with the pre-launch warnings and the runner's status."""

    runs: list[Run]
    warnings: list[str] = field(default_factory=list)
    stopped: bool = False
    runner: dict[str, Any] = field(default_factory=dict)


def wake(store: QueueStore) -> dict[str, Any]:
    """A runner for a queue with work and not stopped (after a reboot or a kill -9 too);
    returns the runner's status."""
    busy = any(e.state in (QueueState.QUEUED, QueueState.STARTING, QueueState.RUNNING,
                           QueueState.EVALUATING) for e in store.entries())
    if busy and not store.flag(runner.STOPPED_FLAG):
        return runner.ensure_running()
    return runner.runner_status()


def enqueue(configs: list[cfg.Config], *, values: list[dict[str, Any]] | None = None,
            sweep: str | None = None, eval_request: dict[str, Any] | None = None,
            trust_remote_code: bool = False, store: QueueStore | None = None,
            progress: Callable[[str], None] | None = None) -> Queued:
    """Check every config (one line, nothing queued, when one is refused), then queue them."""
    from loradeck.engine.train import launch

    configs = [launch.absolutize(c) for c in configs]
    warnings = [w for c in configs
                for w in launch.check_before_start(c, trust_remote_code=trust_remote_code,
                                                   progress=progress)]
    store = store or QueueStore()
    runs_store = RunStore()
    made = []
    for i, config in enumerate(configs):
        run = runs_store.create(config)
        if sweep:
            run.update_state(sweep=sweep, sweep_values=(values or [{}] * len(configs))[i])
        made.append(run)
    store.add([r.id for r in made], sweep=sweep, values=values, eval_request=eval_request)
    stopped = bool(store.flag(runner.STOPPED_FLAG))
    return Queued(made, warnings, stopped, runner.runner_status() if stopped else wake(store))
