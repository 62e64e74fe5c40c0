"""What a preference or reward method is doing, on one line under the machine's: DPO's and
ORPO's reward margin and how often the chosen answer is preferred, KTO's KL, GRPO's mean
reward, each reward function's and the KL; each as its last value and a sparkline. Hidden for
SFT."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, Sparkline

from loradeck.engine.runs.state import figure_label
from loradeck.tui.run_view import RunView

SLOTS = 4
SHOWN = {"dpo": ("rewards/margins", "rewards/accuracies"),
         "orpo": ("rewards/margins", "rewards/accuracies", "nll_loss"),
         "kto": ("kl", "rewards/chosen", "rewards/rejected"),
         "grpo": ("reward",)}
GRPO_AFTER = ("kl", "completions/mean_length")


def shown(view: RunView) -> list[str]:
    """The figures drawn for the run's method, in order (at most SLOTS)."""
    method = view.method or "sft"
    names = [n for n in SHOWN.get(method, ()) if n in view.figures]
    if method == "grpo":
        names += sorted(n for n in view.figures if n.startswith("rewards/")
                        and n.endswith("/mean"))
        names += [n for n in GRPO_AFTER if n in view.figures]
    return names[:SLOTS]


class MethodPanel(Horizontal):
    """``reward margin 8.089 ▁▃▅█  preferred 1.000 ▁▅██``"""

    DEFAULT_CSS = """
    MethodPanel { height: 1; padding: 0 1; display: none; }
    MethodPanel > Label { width: auto; color: $text-muted; padding: 0 1 0 0; }
    MethodPanel > Sparkline { width: 12; height: 1; margin: 0 2 0 0; }
    """

    def compose(self) -> ComposeResult:
        for i in range(SLOTS):
            yield Label("", id=f"method-label-{i}", markup=False)
            yield Sparkline([], id=f"method-spark-{i}")

    def show(self, view: RunView | None) -> None:
        names = shown(view) if view is not None else []
        self.display = bool(names)
        for i in range(SLOTS):
            label = self.query_one(f"#method-label-{i}", Label)
            spark = self.query_one(f"#method-spark-{i}", Sparkline)
            label.display = spark.display = i < len(names)
            if i < len(names):
                series = view.figures[names[i]]  # type: ignore[union-attr]
                label.update(f"{figure_label(names[i])} {series[max(series)]:.3f}")
                spark.data = [series[s] for s in sorted(series)]
