"""One line at the bottom of a form: the help of whatever has focus."""

from __future__ import annotations

from textual.widgets import Static


class HelpLine(Static):
    """Shows the tooltip (help text) of the focused widget; a default line otherwise."""

    DEFAULT_CSS = """
    HelpLine { height: 1; width: 1fr; padding: 0 1; color: $text-muted; background: $panel;
               text-wrap: nowrap; text-overflow: ellipsis; }
    HelpLine.-wrap { height: auto; max-height: 4; text-wrap: wrap; }
    """

    def __init__(self, default: str = "", *, id: str | None = None, wrap: bool = False) -> None:
        """``wrap``: the whole help in up to 4 lines (a form whose help column is hidden when
        narrow), the focused field kept in view as the line grows."""
        super().__init__(default, markup=False, id=id, classes="-wrap" if wrap else None)
        self.default = default
        self._shown = default

    def on_mount(self) -> None:
        self.watch(self.screen, "focused", self._focus_changed)

    def _focus_changed(self, widget) -> None:
        text = None
        node = widget
        while node is not None and text is None and node is not self.screen:
            tip = getattr(node, "tooltip", None)
            text = tip if isinstance(tip, str) and tip else None
            node = node.parent
        text = text or self.default
        if text != self._shown:
            self._shown = text
            wrap = self.has_class("-wrap")
            self.update(text, layout=wrap)  # one line, its size fixed by its CSS, unless wrap
            if wrap and widget is not None:
                self.call_after_refresh(widget.scroll_visible, animate=False)
