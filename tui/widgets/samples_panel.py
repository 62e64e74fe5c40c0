"""The model learning, in words: the latest ``samples`` event's answers beside their
references, one line each."""

from __future__ import annotations

from textual.widgets import Static

from loradeck.tui.run_view import RunView


class SamplesPanel(Static):
    """``step 20 · Q: ... → A: ... (ref: ...)`` for each sample; hidden until there is one."""

    DEFAULT_CSS = """
    SamplesPanel { height: auto; max-height: 4; padding: 0 1; color: $text-muted;
                   text-wrap: nowrap; text-overflow: ellipsis; display: none; }
    """

    def __init__(self) -> None:
        super().__init__("", markup=False, id="train-samples")

    def show(self, view: RunView | None) -> None:
        ev = view.samples if view is not None else None
        if not ev or not ev.get("samples"):
            self.display = False
            self.update("")
            return
        lines = []
        for s in ev["samples"]:
            line = f"step {ev.get('step')} · Q: {_one_line(s.get('prompt'))} → A: " \
                   f"{_one_line(s.get('answer')) or '(nothing)'}"
            if s.get("reference"):
                line += f"  (ref: {_one_line(s['reference'])})"
            if isinstance(s.get("reward"), (int, float)):  # GRPO: what the rewards gave it
                each = " ".join(f"{k} {v:.2f}" for k, v in (s.get("rewards") or {}).items())
                line += f"  (reward {s['reward']:.2f}" + (f": {each})" if each else ")")
            lines.append(line)
        self.update("\n".join(lines))
        self.display = True


def _one_line(text: object) -> str:
    return " ".join(str(text or "").split())
