"""The keys panel (F1): Textual's HelpPanel, mounted once per screen and then shown and
hidden, doing no work while hidden.

Textual mounts a new HelpPanel at every F1 (composing its Markdown and keys table, then laying
out the screen around it) and updates it at every focus or bindings change. ``KeysPanel`` is
mounted hidden once the screen has been drawn, skips those updates while hidden, and catches up
when shown, so F1 only shows or hides it.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import HelpPanel, KeyPanel, Markdown


class QuietKeyPanel(KeyPanel):
    """Textual's KeyPanel, not rebuilt while its panel is hidden."""

    stale = False

    async def on_mount(self) -> None:
        mount_screen = self.screen

        async def bindings_changed(screen: Screen) -> None:
            if not screen.app.app_focus or not self.is_attached or screen is not mount_screen:
                return
            panel = self.parent
            if isinstance(panel, Widget) and not panel.display:
                self.stale = True
                return
            self.stale = False
            await self.recompose()

        def _bindings_changed(screen: Screen) -> None:
            self.call_after_refresh(bindings_changed, screen)

        self.set_class(self.app.ansi_color, "-ansi-scrollbar")
        self.screen.bindings_updated_signal.subscribe(self, _bindings_changed)


class KeysPanel(HelpPanel):
    """HelpPanel that starts hidden and does nothing while hidden."""

    def __init__(self, *, shown: bool = False) -> None:
        super().__init__()
        self.display = shown

    def compose(self) -> ComposeResult:
        yield Markdown(id="widget-help")
        yield QuietKeyPanel(id="keys-help")

    def update_help(self, focused_widget: Widget | None) -> None:
        if self.display:
            super().update_help(focused_widget)

    async def show(self) -> None:
        """Show the panel, up to date with the focused widget and the screen's keys."""
        self.display = True
        self.update_help(self.screen.focused)
        keys = self.query_one(QuietKeyPanel)
        if keys.stale:
            keys.stale = False
            await keys.recompose()

    def hide(self) -> None:
        self.display = False
