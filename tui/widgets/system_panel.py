"""The machine while a run trains: the last system sample as a line, and sparklines of the
GPU's (or CPU's) use and of the memory used, from the run's ``system`` events."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, Sparkline

from loradeck.tui.run_view import RunView


class SystemPanel(Horizontal):
    """One line: ``GPUs 0,1 · GPU0 87% · 21.3/24.0 GB · 71°C · 285 W`` (the GPUs the run was
    given, when the queue gave it some), then use and memory sparklines."""

    DEFAULT_CSS = """
    SystemPanel { height: 1; padding: 0 1; }
    SystemPanel > #system-text { width: auto; max-width: 1fr; color: $text-muted;
                                 text-wrap: nowrap; text-overflow: ellipsis; }
    SystemPanel > Label.system-label { width: auto; padding: 0 0 0 2; color: $text-muted; }
    SystemPanel > Sparkline { width: 16; height: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Label("machine: no sample yet", id="system-text", markup=False)
        yield Label("use", classes="system-label")
        yield Sparkline([], id="system-use")
        yield Label("mem", classes="system-label")
        yield Sparkline([], id="system-mem")

    def show(self, view: RunView | None, gpus: list[str] | None = None) -> None:
        from loradeck.engine.system.sampler import describe, memory_used, utilisation

        text = self.query_one("#system-text", Label)
        history = list(view.system_history) if view is not None else []
        for part in (*self.query(Sparkline), *self.query(".system-label")):
            part.display = bool(history)
        given = f"GPUs {','.join(gpus)} · " if gpus else ""
        if not history:
            text.update(f"{given}machine: no sample yet")
            return
        text.update(given + describe(history[-1]))
        use = [u for u in (utilisation(ev) for ev in history) if u is not None]
        mem = [m for m in (memory_used(ev) for ev in history) if m is not None]
        self.query_one("#system-use", Sparkline).data = use
        self.query_one("#system-mem", Sparkline).data = mem
