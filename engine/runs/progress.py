"""A one-line progress view of a run, rebuilt from its events (the CLI's train and resume).

Light module: plain Python, no heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loradeck.engine.runs.phase import TERMINAL
from loradeck.engine.runs.state import RunState


def duration(seconds: float | None) -> str:
    """``1:02:03`` or ``2:03``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(max(seconds, 0)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class Progress(RunState):
    """The state of a run as its events arrive (``RunState``'s fold); ``line()`` renders it on
    one line and ``update`` says which events deserve a line of their own."""

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL

    def update(self, event: dict[str, Any]) -> str | None:
        """Take one event; returns a line worth printing on its own (status, error...), or None."""
        self.fold(event)
        typ = event.get("type")
        if typ == "status":
            return f"{self.status}: {self.status_message}" if self.status_message \
                else self.status
        if typ == "error":
            line = f"error ({event.get('kind')}): {event.get('message')}"
            return f"{line} ({event['hint']})" if event.get("hint") else line
        if typ == "checkpoint":
            return f"checkpoint at step {event.get('step')}: {event.get('path')}"
        if typ == "log" and event.get("level") in ("warning", "error"):
            return f"{event.get('level')}: {event.get('text')}"
        if typ == "log" and event.get("resumed_from"):
            return str(event.get("text"))
        if typ == "done":
            return f"adapter saved: {event.get('adapter')}"
        if typ == "info":
            return self._info_lines(event)
        return None

    @staticmethod
    def _info_lines(event: dict[str, Any]) -> str | None:
        """What the job chose for the person: auto's quantization, the rows kept."""
        lines = []
        if event.get("quantization_auto"):
            lines.append(f"quantization: {event.get('quantization')} (auto: "
                         f"{event['quantization_auto']})")
        dataset = event.get("dataset")
        if isinstance(dataset, dict) and dataset.get("lengths_line"):
            lines.append(f"data: {dataset['lengths_line']}")
        return "\n".join(lines) or None

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
        if self.eta_seconds is not None and not self.finished \
                and not (self.max_steps and self.step >= self.max_steps):
            parts.append(f"ETA {duration(self.eta_seconds)}")
        return "  ".join(parts)

    def exit_code(self) -> int:
        """0 done, 1 failed, 3 stopped, 4 still running."""
        return {"done": 0, "failed": 1, "stopped": 3}.get(self.phase, 4)
