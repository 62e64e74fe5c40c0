"""A form row: a label, one control, a line of help, and an error line shown when invalid."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Label, Static


class Field(Vertical):
    """``label [control] help`` on one line; ``set_error`` shows the error under it.

    The field's ``key`` is the dotted config key it edits (e.g. ``lora.r``).
    """

    DEFAULT_CSS = """
    Field { height: auto; }
    Field > .field-row { height: auto; }
    Field .field-label { width: 16; padding-right: 1; color: $text; }
    Field .field-control { width: 18; }
    Field .field-help { width: 1fr; padding-left: 1; color: $text-muted;
                        text-wrap: nowrap; text-overflow: ellipsis; }
    Field > .field-error { display: none; color: $text-error; padding-left: 17;
                           height: auto; }
    Field.-invalid > .field-error { display: block; }
    Field.-invalid .field-label { color: $text-error; text-style: bold; }
    """

    def __init__(self, key: str, label: str, control: Widget, help: str = "", *,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self.key = key
        self.label = label
        self.control = control
        self.help = help
        control.add_class("field-control")
        control.tooltip = help or None

    def compose(self) -> ComposeResult:
        with Horizontal(classes="field-row"):
            yield Label(self.label, classes="field-label")
            yield self.control
            yield Static(self.help, classes="field-help", markup=False)
        yield Static("", classes="field-error", markup=False)

    @property
    def error(self) -> str | None:
        return str(self.query_one(".field-error", Static).content) if self.has_class(
            "-invalid") else None

    def set_error(self, message: str | None) -> None:
        """Show ``message`` under the field (None clears it)."""
        self.query_one(".field-error", Static).update(message or "")
        self.set_class(bool(message), "-invalid")
