"""The bare Textual app the app benchmark compares loradeck with: two screens (modes) switched
with one key each, a line of text, a Markdown reply in a scrolling pane, an input and a footer,
nothing else.

    python -m bench.bare_app
"""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Markdown, Static

MARKER = "bare textual app"


class BareScreen(Screen[None]):
    MODE = ""

    def compose(self) -> ComposeResult:
        yield Static(f" {MARKER}: {self.MODE} ", id="title")
        with VerticalScroll(id="transcript"):
            yield Markdown("", id="reply")
        yield Input(placeholder="type here", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#prompt", Input).focus()


class OneScreen(BareScreen):
    MODE = "one"


class TwoScreen(BareScreen):
    MODE = "two"


class BareApp(App[None]):
    MODES = {"one": OneScreen, "two": TwoScreen}
    DEFAULT_MODE = "one"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", id="bare.quit", priority=True),
                Binding("1", "switch_mode('one')", "One", id="bare.one"),
                Binding("2", "switch_mode('two')", "Two", id="bare.two"),
                Binding("escape", "leave", "Leave input", id="bare.leave")]

    def action_leave(self) -> None:
        self.screen.set_focus(None)


if __name__ == "__main__":
    BareApp().run()
