"""Train and eval loss as two labelled sparklines."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Sparkline

from loradeck.tui.event_text import fmt_loss


def _label(name: str, series: Sequence[float]) -> str:
    if not series:
        return f"{name.strip()} loss: none yet"
    return f"{name} {fmt_loss(series[-1])}  min {fmt_loss(min(series))}"


class LossChart(Vertical):
    """A train loss sparkline over an eval loss sparkline, each with its last value.

    ``update_series`` assigns new lists to ``Sparkline.data`` (mutating in place would not
    refresh the widget).
    """

    DEFAULT_CSS = """
    LossChart { height: auto; }
    LossChart > Label { width: 1fr; color: $text-muted; }
    LossChart > Sparkline { height: 3; margin-bottom: 1; }
    LossChart > #eval-spark > .sparkline--max-color { color: $warning; }
    LossChart > #eval-spark > .sparkline--min-color { color: $warning 30%; }
    """

    def compose(self) -> ComposeResult:
        yield Label(_label("train", []), id="train-label")
        yield Sparkline([], summary_function=fmean, id="train-spark")
        yield Label(_label("eval ", []), id="eval-label")
        yield Sparkline([], summary_function=fmean, id="eval-spark")

    def update_series(self, train: Sequence[float], eval_: Sequence[float]) -> None:
        """Show these loss series (ordered by step)."""
        self.query_one("#train-spark", Sparkline).data = list(train)
        self.query_one("#eval-spark", Sparkline).data = list(eval_)
        # one line each, of a fixed width: no layout pass needed
        self.query_one("#train-label", Label).update(_label("train", train), layout=False)
        self.query_one("#eval-label", Label).update(_label("eval ", eval_), layout=False)
