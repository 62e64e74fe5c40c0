"""An Input whose typing lays nothing out."""

from __future__ import annotations

from textual.widgets import Input

from loradeck.tui import textual_compat as compat


class LineInput(Input):
    """Textual's Input, less a layout of the whole screen at every key.

    Textual's Input sets its virtual size (the width of its text, for scrolling along it) at
    every change of its value, and the virtual size is a layout reactive: each typed letter
    lays out every widget of the screen (3-15 ms on the Chat screen with a reply in it). When
    the input's own size does not follow its text (a set width and height, as every input of
    the app has), the new virtual size is kept and the input is only drawn again.
    """

    def _watch_value(self, value: str) -> None:
        fixed = not self.styles.auto_dimensions
        super()._watch_value(value)
        if fixed:
            compat.keep_layout(self)  # drawn again, not laid out
