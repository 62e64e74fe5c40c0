"""The training view as data: events.jsonl folded into log lines, loss history, table rows,
progress and phase.

Pure and light (no textual, no torch): the Train screen feeds it what ``EventTail.poll()``
returns and draws the result, so the whole view can be rebuilt from the run directory at any
time (reopening the app, ``loradeck attach``) and tested without a terminal.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from loradeck.engine.runs.state import RunState
from loradeck.tui.event_text import event_text, fmt_duration, fmt_loss

URL_RE = re.compile(r"https?://\S+")


@dataclass
class TableRow:
    """One line of the step / train loss / eval loss table."""

    step: int
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None

    def cells(self) -> tuple[str, str, str, str]:
        lr = "-" if self.learning_rate is None else f"{self.learning_rate:.2e}"
        return (str(self.step), fmt_loss(self.loss), fmt_loss(self.eval_loss), lr)


SYSTEM_SAMPLES = 60  # five minutes at the job's default of one sample every 5 s


@dataclass
class ViewDelta:
    """What one ``feed()`` changed, so a screen redraws only that."""

    new_lines: list[str] = field(default_factory=list)
    rows: list[TableRow] = field(default_factory=list)
    losses_changed: bool = False
    progress_changed: bool = False
    phase_changed: bool = False
    system_changed: bool = False
    samples_changed: bool = False
    events: int = 0

    @property
    def empty(self) -> bool:
        return self.events == 0


@dataclass
class RunView(RunState):
    """Everything the Train screen shows, folded from a run's events in order: the run's state
    (``RunState.fold``, as the store and the CLI fold it) plus the loss history, the table
    rows and the log lines."""

    max_log_lines: int = 2000
    rows: dict[int, TableRow] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    repo_url: str | None = None
    t0: float | None = None
    events_seen: int = 0
    log: deque[str] = field(init=False)
    samples: dict[str, Any] | None = None  # the latest samples event
    system_history: deque[dict[str, Any]] = field(init=False)
    """The last SYSTEM_SAMPLES system samples, for the Train screen's sparklines."""

    def __post_init__(self) -> None:
        self.log = deque(maxlen=self.max_log_lines)
        self.system_history = deque(maxlen=SYSTEM_SAMPLES)

    # folding ---------------------------------------------------------------------------------
    def feed(self, events: Iterable[dict[str, Any]]) -> ViewDelta:
        """Fold ``events`` (in file order) into the view; return what changed."""
        delta = ViewDelta()
        dirty: dict[int, TableRow] = {}
        for ev in events:
            delta.events += 1
            self.events_seen += 1
            t = ev.get("t")
            if self.t0 is None and isinstance(t, (int, float)):
                self.t0 = float(t)
            typ = ev.get("type")
            self.fold(ev)
            if typ == "done" and self.done_after_status:
                self.phase = "done"  # finished, even if the closing status line is torn
            handler = getattr(self, f"_on_{typ}", None)
            if handler is not None:
                handler(ev, delta, dirty)
            line = self.format_line(ev)
            if line is not None:
                delta.new_lines.append(line)
                self.log.append(line)
        if len(delta.new_lines) > self.max_log_lines:
            delta.new_lines = delta.new_lines[-self.max_log_lines:]
        delta.rows = [dirty[s] for s in sorted(dirty)]
        return delta

    def _on_status(self, ev: dict[str, Any], delta: ViewDelta, dirty: dict) -> None:
        delta.phase_changed = True

    def _on_metrics(self, ev: dict[str, Any], delta: ViewDelta, dirty: dict) -> None:
        step = ev.get("step")  # the series are RunState's; the table shows them by step
        if isinstance(step, int) and (ev.get("loss") is not None
                                      or ev.get("eval_loss") is not None):
            self.rows[step] = dirty[step] = TableRow(step, self.train_losses.get(step),
                                                     self.eval_losses.get(step),
                                                     self.learning_rates.get(step))
            delta.losses_changed = True
        delta.progress_changed = True

    def _on_info(self, ev: dict[str, Any], delta: ViewDelta, dirty: dict) -> None:
        self.info.update({k: v for k, v in ev.items() if k not in ("t", "type")})
        delta.progress_changed = True

    def _on_checkpoint(self, ev: dict[str, Any], delta: ViewDelta, dirty: dict) -> None:
        delta.progress_changed = True  # the step reached, which a metrics line may not say

    def _on_samples(self, ev: dict[str, Any], delta: ViewDelta, dirty: dict) -> None:
        self.samples = ev
        delta.samples_changed = True

    def _on_system(self, ev: dict[str, Any], delta: ViewDelta, dirty: dict) -> None:
        self.system_history.append(ev)
        delta.system_changed = True

    def _on_error(self, ev: dict[str, Any], delta: ViewDelta, dirty: dict) -> None:
        delta.phase_changed = True

    def _on_done(self, ev: dict[str, Any], delta: ViewDelta, dirty: dict) -> None:
        delta.progress_changed = delta.phase_changed = True

    def _on_log(self, ev: dict[str, Any], delta: ViewDelta, dirty: dict) -> None:
        match = URL_RE.search(str(ev.get("text", "")))
        if match and self.after_phase in ("pushing", "pushed"):
            self.repo_url = match.group(0).rstrip(".,)")

    # reading ---------------------------------------------------------------------------------
    def train_series(self) -> list[float]:
        """Train losses ordered by step (a resumed run's repeated steps count once)."""
        return [self.train_losses[s] for s in sorted(self.train_losses)]

    def eval_series(self) -> list[float]:
        return [self.eval_losses[s] for s in sorted(self.eval_losses)]

    def fraction(self) -> float | None:
        """Share of the run done, when max_steps is known."""
        if not self.max_steps or self.max_steps <= 0:
            return None
        return min(1.0, self.step / self.max_steps)

    def display_phase(self, alive: bool) -> str:
        """The training phase, or what a run whose job died mid-way reads as everywhere
        (``RunState.reads_as``)."""
        phase, _, interrupted = self.reads_as(alive, self.events_seen > 0)
        return phase if interrupted else self.phase

    def can_stop(self, alive: bool) -> bool:
        return alive and self.phase not in ("stopping", "stopped", "done", "failed")

    def can_resume(self, alive: bool) -> bool:
        """Resume applies to a run whose job is gone before it finished."""
        if alive or self.phase == "done" or self.done is not None:
            return False
        return self.events_seen > 0

    def progress_text(self, width: int | None = None) -> str:
        """``epoch 0.40 · step 4/10 · ETA 0:12 · 812 tok/s · 1.2 GB``: the parts known; when
        ``width`` is too narrow for them all, the epoch goes first, then tokens/s (step, ETA
        and memory stay)."""
        parts: list[tuple[str, str]] = []
        if self.epoch is not None:
            parts.append(("epoch", f"epoch {self.epoch:.2f}"))
        parts.append(("step", f"step {self.step}/{self.max_steps if self.max_steps else '?'}"))
        if self.eta_seconds is not None and self.phase == "training":
            parts.append(("eta", f"ETA {fmt_duration(self.eta_seconds)}"))
        if self.tokens_per_second is not None:
            parts.append(("speed", f"{self.tokens_per_second:,.0f} tok/s"))
        if self.memory_gb is not None:
            parts.append(("memory", f"{self.memory_gb:.2f} GB"))
        for drop in ("epoch", "speed"):
            if width is None or len(" · ".join(t for _, t in parts)) <= width:
                break
            parts = [p for p in parts if p[0] != drop]
        return " · ".join(t for _, t in parts)

    def status_text(self, alive: bool) -> str:
        """One line: phase, its message, and the error in words when there is one."""
        phase, message, interrupted = self.reads_as(alive, self.events_seen > 0)
        if not interrupted:
            phase, message = self.phase, self.message
        text = f"{phase}: {message}" if message else phase
        if self.after_phase:
            text += f" · {self.after_phase}"
        if self.error and phase in ("failed", "stopped"):
            err = self.error
            text += f" · {err.get('kind')}: {err.get('message')}"
            if err.get("hint"):
                text += f" ({err['hint']})"
        return text

    # log lines -------------------------------------------------------------------------------
    def _stamp(self, ev: dict[str, Any]) -> str:
        t = ev.get("t")
        if self.t0 is None or not isinstance(t, (int, float)):
            return "[--:--]"
        return f"[{fmt_duration(max(0.0, t - self.t0)):>5}]"

    def format_line(self, ev: dict[str, Any]) -> str | None:
        """The log line an event reads as (time relative to the run's first event)."""
        text = event_text(ev)
        return None if text is None else f"{self._stamp(ev)} {text}"


