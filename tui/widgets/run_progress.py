"""A run's progress: a bar plus epoch, step/max, ETA, tokens/s and memory."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.events import Resize
from textual.widgets import Label, ProgressBar

from loradeck.tui.run_view import RunView


class RunProgress(Horizontal):
    """Progress of a training run, drawn from a ``RunView`` (no clock of its own: the ETA is
    the job's, so the same events draw the same bar)."""

    DEFAULT_CSS = """
    RunProgress { height: 1; }
    RunProgress > ProgressBar { width: auto; margin-right: 1; }
    RunProgress > ProgressBar > Bar { width: 24; }
    RunProgress.-narrow > ProgressBar > Bar { width: 12; }
    RunProgress > Label { width: 1fr; }
    """
    NARROW = 100
    """Narrower than this, the bar is shorter and the figures give up epoch, then tokens/s,
    before memory."""

    def __init__(self) -> None:
        super().__init__()
        self._last: tuple[RunView | None, bool] | None = None

    def on_resize(self, event: Resize) -> None:
        self.set_class(event.size.width < self.NARROW, "-narrow")
        if self._last is not None:
            self.call_after_refresh(self.show, *self._last)

    def compose(self) -> ComposeResult:
        yield ProgressBar(total=None, show_eta=False, id="run-bar")
        yield Label("no run", id="run-stats")

    def show(self, view: RunView | None, alive: bool = False) -> None:
        """Draw ``view`` (``None``: no run yet); a live job still loading pulses the bar."""
        self._last = (view, alive)
        bar = self.query_one(ProgressBar)
        stats = self.query_one("#run-stats", Label)
        if view is None:
            bar.update(total=100, progress=0)
            stats.update("no run", layout=False)
            return
        if alive and view.phase in ("queued", "loading") and not view.step:
            bar.update(total=None)
        elif view.max_steps and view.max_steps > 0:
            done = view.max_steps if view.phase == "done" else min(view.step, view.max_steps)
            bar.update(total=view.max_steps, progress=done)
        elif view.phase == "done":
            bar.update(total=1, progress=1)
        else:
            bar.update(total=100, progress=0)
        width = stats.content_size.width or None
        stats.update(view.progress_text(width), layout=False)  # one line of a fixed width
