"""Compare: two or more runs side by side, pushed from the Runs screen (space marks, v
compares). Their train and eval loss on one line chart with a legend (textual-plotext), the
config keys that differ, and their final losses, tokens/s, peak memory and runtime."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Label, Static
from textual_plotext import PlotextPlot

from loradeck.engine.runs.compare import figure_rows, legend, plot, short_ids, value_text
from loradeck.tui.widgets.footer import KeysFooter
from loradeck.tui.widgets.inline_message import InlineMessage


class CompareScreen(Screen):
    """Runs side by side; Esc goes back to the Runs screen."""

    class Compared(Message, bubble=False):
        """The comparison, read in a worker thread."""

        def __init__(self, data: dict[str, Any]) -> None:
            super().__init__()
            self.data = data

    BINDINGS = [Binding("escape", "back", "Back", id="compare.back",
                        tooltip="Back to the Runs screen")]
    DEFAULT_CSS = """
    CompareScreen #compare-title { padding: 0 1; text-style: bold; }
    CompareScreen #compare-chart { height: 1fr; min-height: 8; }
    CompareScreen #compare-legend { padding: 0 1; height: auto; }
    CompareScreen #compare-tables { height: auto; max-height: 12; }
    CompareScreen #compare-diff { width: 1fr; height: auto; max-height: 12; }
    CompareScreen #compare-figures { width: 1fr; height: auto; max-height: 12; }
    CompareScreen #compare-tables.narrow { layout: vertical; max-height: 14; }
    CompareScreen #compare-tables.narrow DataTable { width: 100%; max-height: 7; }
    """
    NARROW = 110  # below this many columns the two tables stack

    def __init__(self, run_ids: list[str]) -> None:
        super().__init__()
        self.run_ids = list(run_ids)
        self.data: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Compare {' · '.join(self.run_ids)}", id="compare-title",
                        markup=False)
            yield InlineMessage(id="compare-message")
            yield PlotextPlot(id="compare-chart")
            yield Static(id="compare-legend")
            with Horizontal(id="compare-tables"):
                yield DataTable(id="compare-diff", cursor_type="none", zebra_stripes=True)
                yield DataTable(id="compare-figures", cursor_type="none", zebra_stripes=True)
        yield KeysFooter()

    def on_mount(self) -> None:
        self._read()

    def on_resize(self, event: Resize) -> None:
        self.query_one("#compare-tables").set_class(event.size.width < self.NARROW, "narrow")

    @work(thread=True, exclusive=True, group="compare-read", exit_on_error=False,
          description="reading the runs to compare")
    def _read(self) -> None:
        from loradeck.engine.runs.compare import compare
        from loradeck.engine.runs.store import RunStore

        store = RunStore()
        self.post_message(self.Compared(compare([store.resolve(r) for r in self.run_ids])))

    def on_worker_state_changed(self, event: Any) -> None:
        from textual.worker import WorkerState

        if event.state == WorkerState.ERROR and event.worker.error is not None:
            self.query_one("#compare-message", InlineMessage).show_error(event.worker.error)

    @on(Compared)
    def _compared(self, message: Compared) -> None:
        self.data = data = message.data
        ids = short_ids([r["id"] for r in data["runs"]])  # told apart by their ends
        chart = self.query_one(PlotextPlot)
        plot(chart.plt, data)
        chart.refresh()
        key = Text("  ").join(Text(text, style=f"rgb({r},{g},{b})")
                              for text, (r, g, b) in legend(data))
        self.query_one("#compare-legend", Static).update(key)
        diff = self.query_one("#compare-diff", DataTable)
        diff.clear(columns=True)
        diff.add_column("config differs", key="key")
        for i, run_id in enumerate(ids):
            diff.add_column(run_id, key=f"run{i}")
        if data["config_diff"]:
            for key, values in data["config_diff"].items():
                diff.add_row(key, *(value_text(v) for v in values))
        else:
            diff.add_row("(the same)", *("" for _ in ids))
        figures = self.query_one("#compare-figures", DataTable)
        figures.clear(columns=True)
        figures.add_column("", key="figure")
        for i, run_id in enumerate(ids):
            figures.add_column(run_id, key=f"run{i}")
        for row in figure_rows(data):
            figures.add_row(*row)

    def action_back(self) -> None:
        self.dismiss()
