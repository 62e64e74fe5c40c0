"""A one-line message in place: what went wrong (or what is happening) where it happened."""

from __future__ import annotations

from textual.widgets import Static

from loradeck.engine.errors import error_text, redact


class InlineMessage(Static):
    """Shows info or an error in place; hidden while empty. Text is plain (no markup)."""

    DEFAULT_CSS = """
    InlineMessage { height: auto; width: 1fr; display: none; padding: 0 1; }
    InlineMessage.-shown { display: block; }
    InlineMessage.-error { color: $text-error; background: $error-muted; }
    InlineMessage.-info { color: $text-muted; }
    InlineMessage.-success { color: $text-success; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", markup=False, id=id, classes=classes)

    def show_error(self, exc_or_text: BaseException | str) -> str:
        text = exc_or_text if isinstance(exc_or_text, str) else error_text(exc_or_text)
        self._set(redact(text), "-error")
        return text

    def show_info(self, text: str) -> None:
        self._set(redact(text), "-info")

    def show_success(self, text: str) -> None:
        self._set(redact(text), "-success")

    def clear(self) -> None:
        self.update("")
        self.remove_class("-shown", "-error", "-info", "-success")

    def _set(self, text: str, kind: str) -> None:
        self.update(text)
        self.remove_class("-error", "-info", "-success")
        self.add_class("-shown", kind)
