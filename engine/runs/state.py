"""A run's state folded from its events: the one place events become phase, step, losses
(the series by step), checkpoints, error, the done record and the phase a run reads as. The
run store's summary, the CLI's progress line, compare, the model card, merge and push, and
the app's Train view all fold through ``RunState.fold``.

Light module: plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loradeck.engine.enums import EvalStage
from loradeck.engine.runs.phase import ACTIVE, AFTER_TRAINING, SETTLED, Phase

ENDED_UNSAID = "the job ended without a final status (killed?); resume it to continue"
"""What a run whose job died mid-way reads as, wherever it is shown."""

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
    train_losses: dict[int, float] = field(default_factory=dict)  # by step; a resumed run's
    eval_losses: dict[int, float] = field(default_factory=dict)   # repeated steps count once
    learning_rates: dict[int, float] = field(default_factory=dict)  # at the train loss steps
    speeds: list[float] = field(default_factory=list)  # every tokens/s logged
    peak_memory_gb: float | None = None
    checkpoints: list[int] = field(default_factory=list)  # steps, in the order written
    prior_phase: str | None = None  # what the run read as when its merge or push began
    status_before: str | None = None  # the status before the last one
    method: str | None = None  # training.method, from the job's info event
    figures: dict[str, dict[int, float]] = field(default_factory=dict)  # the method's, by step
    last_eval: dict[str, Any] | None = None  # the last evaluation's eval event
    eval_running: bool = False  # an evaluation reported progress and has not ended since

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
            self.status_before = self.status
            phase = str(ev.get("phase", self.status))
            self.status, self.status_message = phase, str(ev.get("message", ""))
            self.done_after_status = False
            if phase in (Phase.MERGING, Phase.PUSHING) and self.status_before not in (
                    Phase.MERGING, Phase.PUSHING):
                self.prior_phase = self.settled or Phase.DONE
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
            self._series(ev)
        elif typ == "info" and isinstance(ev.get("method"), str):
            self.method = ev["method"]
        elif typ == "checkpoint":
            if isinstance(ev.get("step"), int) and ev["step"] not in self.checkpoints:
                self.checkpoints.append(ev["step"])
        elif typ == "error":
            self.error = self.last_error = {k: ev.get(k) for k in ("kind", "message", "hint")}
        elif typ == "system":
            self.system = {k: v for k, v in ev.items() if k != "type"}
        elif typ == "done":
            self.done = {k: v for k, v in ev.items() if k not in ("t", "type")}
            self.done_after_status = True
        elif typ == "eval":
            if ev.get("stage") == EvalStage.DONE:
                self.last_eval = {k: v for k, v in ev.items() if k != "type"}
                self.eval_running = False
            else:
                self.eval_running = True
        if typ == "error":
            self.eval_running = False

    def _series(self, ev: dict[str, Any]) -> None:
        step = ev.get("step")
        if not isinstance(step, int):
            return
        if _number(ev.get("loss")):
            self.train_losses[step] = float(ev["loss"])
            if _number(ev.get("learning_rate")):
                self.learning_rates[step] = float(ev["learning_rate"])
        if _number(ev.get("eval_loss")):
            self.eval_losses[step] = float(ev["eval_loss"])
        if _number(ev.get("tokens_per_second")):
            self.speeds.append(float(ev["tokens_per_second"]))
        if _number(ev.get("memory_gb")):
            self.peak_memory_gb = max(self.peak_memory_gb or 0.0, float(ev["memory_gb"]))
        figures = ev.get("figures")
        if isinstance(figures, dict):
            for name, value in figures.items():
                if _number(value) and not str(name).startswith("eval_"):
                    self.figures.setdefault(str(name), {})[step] = float(value)

    def key_figure(self) -> tuple[str, float] | None:
        """The method's figure that says it is working, as last logged: DPO's and ORPO's
        reward margin, KTO's KL, GRPO's mean reward (None for SFT, or before any)."""
        name = KEY_FIGURES.get(self.method or "")
        series = self.figures.get(name or "")
        if not series:
            return None
        return FIGURE_LABELS.get(name, name), series[max(series)]

    def last_loss(self) -> float | None:
        return self.train_losses[max(self.train_losses)] if self.train_losses else None

    def last_eval_loss(self) -> float | None:
        return self.eval_losses[max(self.eval_losses)] if self.eval_losses else None

    def restore_phase(self) -> str:
        """The phase a failed merge or push hands the run back in: what it read as before."""
        return self.prior_phase or self.settled or Phase.DONE

    def reads_as(self, alive: bool, seen_events: bool = True) -> tuple[str, str, bool]:
        """(phase, message, interrupted): what the run reads as, the one answer every reader
        gives. A job that died mid-training reads failed (ENDED_UNSAID); a killed merge or
        push leaves the phase the run had before it, its message naming the merge or push."""
        phase, message = self.settled_phase(), self.status_message
        if self.done_after_status:
            message = "training finished"
        if alive or phase in SETTLED or not seen_events:
            return phase, message, False
        if phase in (Phase.MERGING, Phase.PUSHING) and self.settled:
            what = "merge" if phase == Phase.MERGING else "push"
            return self.settled, (f"the {what} ended without a final status (killed, or the "
                                  f"disk full?); run loradeck {what} again"), False
        return Phase.FAILED, ENDED_UNSAID, True

    def settled_phase(self) -> str:
        """The phase a reader reports: the last status, or done when training finished and its
        closing status line was torn off."""
        return Phase.DONE if self.done_after_status else self.status


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


KEY_FIGURES = {"dpo": "rewards/margins", "orpo": "rewards/margins", "kto": "kl",
               "grpo": "reward"}
FIGURE_LABELS = {"rewards/margins": "reward margin", "rewards/accuracies": "preferred",
                 "kl": "KL", "reward": "reward", "reward_std": "reward std",
                 "completions/mean_length": "answer tokens", "rewards/chosen": "chosen",
                 "rewards/rejected": "rejected", "nll_loss": "NLL", "log_odds_ratio":
                 "log odds"}
"""How a person reads each figure's name (GRPO's rewards/NAME/mean read as NAME)."""


def figure_label(name: str) -> str:
    if name.startswith("rewards/") and name.endswith("/mean"):
        return name[len("rewards/"):-len("/mean")]
    return FIGURE_LABELS.get(name, name)


def fold(events: list[dict[str, Any]]) -> RunState:
    """A fresh state from all of ``events``."""
    state = RunState()
    for ev in events:
        state.fold(ev)
    return state
