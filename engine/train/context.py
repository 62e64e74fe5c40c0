"""What one job process knows while it trains: its run, config, events writer, rank and stop
flag. Light module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loradeck.engine.config import Config
from loradeck.engine.runs.events import Events
from loradeck.engine.runs.store import Run


@dataclass
class JobContext:
    """What one job process knows: its run, config, events writer, rank and stop flag."""

    run: Run
    config: Config
    events: Events
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    signalled: bool = False      # set by the SIGTERM/SIGINT handler
    step: int = 0                # the last global step reached
    oom_injected: bool = False
    device: str = "cpu"
    training: bool = False       # the training loop has started (an OOM there is retried)

    lead: bool | None = None     # writes the run directory; default: rank 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0 if self.lead is None else self.lead

    def stop_requested(self) -> bool:
        return self.signalled or self.run.stop_path.exists()

    def phase(self, phase: str, message: str = "") -> None:
        """A status event and the phase in state.json (main process only)."""
        if self.is_main:
            self.events.status(phase, message)
            self.run.update_state(phase=phase)

    def log(self, text: str, level: str = "info", **fields: Any) -> None:
        if self.is_main:
            self.events.emit("log", level=level, text=text, **fields)
