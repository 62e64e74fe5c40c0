"""A one-line progress view of a run, rebuilt from its events (the CLI's train and resume).

Light module: plain Python, no heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loradeck.engine.runs.events import TERMINAL_PHASES


def duration(seconds: float | None) -> str:
    """``1:02:03`` or ``2:03``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(max(seconds, 0)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class Progress:
    """The state of a run as its events arrive; ``line()`` renders it on one line."""

    phase: str = "queued"
    message: str = ""
    step: int = 0
    max_steps: int | None = None
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    error: dict[str, Any] | None = None
    done: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL_PHASES

    def update(self, event: dict[str, Any]) -> str | None:
        """Take one event; returns a line worth printing on its own (status, error...), or None."""
        typ = event.get("type")
        if typ == "status":
            self.phase = event.get("phase", self.phase)
            self.message = event.get("message", "")
            return f"{self.phase}: {self.message}" if self.message else self.phase
        if typ == "metrics":
            self.step = event.get("step", self.step)
            self.max_steps = event.get("max_steps") or self.max_steps
            for key in ("loss", "eval_loss", "tokens_per_second", "eta_seconds"):
                if event.get(key) is not None:
                    setattr(self, key, event[key])
            return None
        if typ == "error":
            self.error = event
            line = f"error ({event.get('kind')}): {event.get('message')}"
            return f"{line} ({event['hint']})" if event.get("hint") else line
        if typ == "checkpoint":
            self.step = event.get("step", self.step)
            return f"checkpoint at step {event.get('step')}: {event.get('path')}"
        if typ == "log" and event.get("level") in ("warning", "error"):
            return f"{event.get('level')}: {event.get('text')}"
        if typ == "log" and event.get("resumed_from"):
            return str(event.get("text"))
        if typ == "done":
            self.done = event
            self.step = event.get("step", self.step)
            self.max_steps = event.get("max_steps") or self.max_steps
            return f"adapter saved: {event.get('adapter')}"
        return None

    def line(self) -> str:
        """``training  step 12/30 (40%)  loss 5.931  eval 6.012  512 tok/s  ETA 0:12``."""
        parts = [self.phase]
        if self.max_steps:
            pct = 100.0 * self.step / self.max_steps
            parts.append(f"step {self.step}/{self.max_steps} ({pct:.0f}%)")
        elif self.step:
            parts.append(f"step {self.step}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.eval_loss is not None:
            parts.append(f"eval {self.eval_loss:.4f}")
        if self.tokens_per_second is not None:
            parts.append(f"{self.tokens_per_second:,.0f} tok/s")
        if self.eta_seconds is not None and not self.finished:
            parts.append(f"ETA {duration(self.eta_seconds)}")
        return "  ".join(parts)

    def exit_code(self) -> int:
        """0 done, 1 failed, 3 stopped, 4 still running."""
        return {"done": 0, "failed": 1, "stopped": 3}.get(self.phase, 4)
