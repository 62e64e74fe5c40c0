"""The top line: the app name and every screen with its key, the current one highlighted."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from loradeck.tui.modes import SCREENS


class NavBar(Static):
    """``loradeck  m Model  d Data  l LoRA ...`` with the ``current`` screen highlighted.

    Colours come from theme variables, so a theme switch restyles it.
    """

    DEFAULT_CSS = """
    NavBar { height: 1; width: 1fr; background: $panel; color: $text-muted;
             text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, current: str, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.current = current

    def on_mount(self) -> None:
        self.update(self.build())

    def build(self) -> Content:
        app = self.app
        keymap = getattr(app, "_keymap", {}) or {}
        modes = getattr(app, "MODES", {})
        parts: list[tuple[str, str] | str] = [(" loradeck ", "b $primary")]
        for mode, key, label in SCREENS:
            key = keymap.get(f"go.{mode}", key).split(",")[0]
            if mode == self.current:
                parts += [" ", (f" {key} {label} ", "b reverse $primary")]
            elif mode in modes:
                parts += ["  ", (key, "b $accent"), f" {label}"]
            else:
                parts += ["  ", (f"{key} {label}", "dim")]
        return Content.assemble(*parts)
