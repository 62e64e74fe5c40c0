"""A run's state folded from its events: the one place events become phase, step, losses,
error and the done record. The run store's summary, the CLI's progress line and the app's
Train view all fold through ``RunState.fold``.

Light module: plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loradeck.engine.runs.phase import ACTIVE, AFTER_TRAINING, SETTLED, Phase

STEP_EVENTS = ("metrics", "checkpoint", "done")  # events that say the step reached
METRIC_FIELDS = ("epoch", "eta_seconds", "tokens_per_second", "memory_gb", "learning_rate",
                 "grad_norm")


@dataclass
class RunState:
    """What the events of a run say, in file order.

    ``status`` is the last status of any kind; ``phase`` the last training phase (merge and
    push statuses go to ``after_phase``); ``error`` is the current error (a new start clears
    it), ``last_error`` the last one ever written."""

    phase: str = Phase.QUEUED
    message: str = ""
    status: str = Phase.QUEUED
    status_message: str = ""
    after_phase: str | None = None
    settled: str | None = None  # the last status after which no job needs to run
    step: int = 0
    max_steps: int | None = None
    loss: float | None = None
    eval_loss: float | None = None
    epoch: float | None = None
    eta_seconds: float | None = None
    tokens_per_second: float | None = None
    memory_gb: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    error: dict[str, Any] | None = None
    last_error: dict[str, Any] | None = None
    done: dict[str, Any] | None = None
    done_after_status: bool = False  # a done event with no status line after it (torn)
    started: float | None = None
    system: dict[str, Any] | None = None  # the last system sample (with its t)

    def fold(self, ev: dict[str, Any]) -> None:
        """Take one event."""
        typ = ev.get("type")
        if self.started is None and isinstance(ev.get("t"), (int, float)):
            self.started = float(ev["t"])
        if typ in STEP_EVENTS:
            if isinstance(ev.get("step"), int):
                self.step = ev["step"]  # the last step reached, whichever event says it
            if isinstance(ev.get("max_steps"), int):
                self.max_steps = ev["max_steps"]
        if typ == "status":
            phase = str(ev.get("phase", self.status))
            self.status, self.status_message = phase, str(ev.get("message", ""))
            self.done_after_status = False
            if phase in SETTLED:
                self.settled = phase
            if phase in AFTER_TRAINING:
                self.after_phase = phase
            else:
                self.phase, self.message = phase, self.status_message
                if phase in ACTIVE:
                    if phase in (Phase.LOADING, Phase.TRAINING):
                        self.error = None
                    self.done = None
        elif typ == "metrics":
            for key in ("loss", "eval_loss", *METRIC_FIELDS):
                if ev.get(key) is not None:
                    setattr(self, key, ev[key])
        elif typ == "error":
            self.error = self.last_error = {k: ev.get(k) for k in ("kind", "message", "hint")}
        elif typ == "system":
            self.system = {k: v for k, v in ev.items() if k != "type"}
        elif typ == "done":
            self.done = {k: v for k, v in ev.items() if k not in ("t", "type")}
            self.done_after_status = True

    def settled_phase(self) -> str:
        """The phase a reader reports: the last status, or done when training finished and its
        closing status line was torn off."""
        return Phase.DONE if self.done_after_status else self.status


def fold(events: list[dict[str, Any]]) -> RunState:
    """A fresh state from all of ``events``."""
    state = RunState()
    for ev in events:
        state.fold(ev)
    return state
