"""The keys panel (F1): Textual's HelpPanel, mounted once per screen and then shown and
hidden, doing no work while hidden, and drawn over the screen on a layer of its own.

Textual mounts a new HelpPanel at every F1 (composing its Markdown and keys table, then laying
out the screen around it: every widget of the screen is drawn again at a narrower width) and
updates it at every focus or bindings change. ``KeysPanel`` is mounted hidden once the screen
has been drawn, skips those updates while hidden, and catches up when shown. It lies on the
screen's ``keys-panel`` layer (see ``loradeck.tui.screens.LoradeckScreen``), so showing it draws the
panel alone and leaves the region and size of every other widget as they were. Its keys
table is rendered once per set of keys and width (``KeysTable``), not at every measure and draw.
"""

from __future__ import annotations

from collections.abc import Callable
from textwrap import dedent
from typing import Any, TypeVar

from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table
from textual.app import App, ComposeResult
from textual.geometry import Size
from textual.screen import Screen
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import HelpPanel, KeyPanel, Markdown, Static

from loradeck.tui import textual_compat as compat
from loradeck.tui.textual_compat import BindingsTable, Compositor

LAYER = "keys-panel"
T = TypeVar("T")


class KeysTable(BindingsTable):
    """Textual's BindingsTable, its Rich table rendered once per set of keys and width.

    Textual renders the table again each time it measures or draws it (its height is measured
    at every layout of the panel, its lines at every draw); this keeps the lines and draws them
    as they are until the screen's keys, the width or the theme change."""

    def __init__(self) -> None:
        super().__init__(shrink=True, expand=False)
        self._lines: dict[tuple, list[Strip]] = {}
        self._widths: dict[tuple, int] = {}
        self._keys: tuple | None = None

    def on_mount(self) -> None:
        self.watch(self.app, "theme", lambda _: self.keys_changed(), init=False)

    def keys_changed(self) -> None:
        """The screen's bindings (or the theme) may have changed: when the keys it lists
        differ, the table is rendered anew."""
        keys = self._current_keys()
        if keys != self._keys:
            self._keys = keys
            self.refresh(layout=True)

    def _current_keys(self) -> tuple:
        app = self.app
        return (app.theme, tuple(
            (key, b.binding.action, b.binding.description, b.binding.tooltip, b.enabled,
             b.tooltip, app.get_key_display(b.binding))
            for key, b in self.screen.active_bindings.items() if not b.binding.system))

    def _signature(self) -> tuple:
        if self._keys is None:
            self._keys = self._current_keys()
        return self._keys

    def _cached(self, cache: dict[tuple, T], width: int, make: Callable[[], T]) -> T:
        """``cache``'s entry for the screen's keys at ``width``, made when missing (entries
        for other keys are dropped: the keys changed)."""
        key = (self._signature(), width)
        if key not in cache:
            if any(k[0] != key[0] for k in cache):
                cache.clear()
            cache[key] = make()
        return cache[key]

    def render_bindings_table(self) -> Table:
        """Textual's table, with the screen's and the app's keys first and the focused
        widget's own (cursor keys of an input, a table) after them."""
        return BindingsTable.render_bindings_table(_ScreenKeysFirst(self))  # type: ignore[arg-type]

    def _strips(self, width: int) -> list[Strip]:
        def render() -> list[Strip]:
            console = self.app.console
            options = console.options.update_width(width)
            rendered = console.render_lines(self.render_bindings_table(), options, pad=False)
            return [Strip(Segment.simplify(line)) for line in rendered]

        return self._cached(self._lines, width, render)

    def get_content_width(self, container: Size, viewport: Size) -> int:
        def measure() -> int:
            console = self.app.console
            options = console.options.update_width(max(container.width, 1))
            return Measurement.get(console, options, self.render_bindings_table()).maximum

        return min(self._cached(self._widths, container.width, measure), container.width)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._strips(width))

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        lines = self._strips(width)
        style = self.rich_style
        if 0 <= y < len(lines):
            return lines[y].apply_style(style).extend_cell_length(width, style)
        return Strip.blank(width, style)


def screen_keys_first(bindings: dict[str, Any]) -> dict[str, Any]:
    """``active_bindings`` reordered: the screen's group, the app's, then the widgets'."""
    def rank(item: tuple[str, Any]) -> int:
        node = item[1].node
        return 0 if isinstance(node, Screen) else 1 if isinstance(node, App) else 2

    return dict(sorted(bindings.items(), key=rank))  # stable: each group keeps its order


class _ScreenKeysFirst:
    """The keys table as Textual's renderer sees it, its screen's bindings reordered."""

    def __init__(self, table: KeysTable) -> None:
        self._table = table
        self.screen = _ReorderedScreen(table.screen)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


class _ReorderedScreen:
    def __init__(self, screen: Screen) -> None:
        self._screen = screen

    @property
    def active_bindings(self) -> dict[str, Any]:
        return screen_keys_first(self._screen.active_bindings)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._screen, name)


class QuietKeyPanel(KeyPanel):
    """Textual's KeyPanel, not rebuilt when the screen's bindings change: Textual's panel
    recomposes (mounts a new keys table, so the screen is laid out again) at every change,
    even while hidden. Here the one keys table is drawn again instead, and only once the
    panel is shown."""

    stale = False

    def compose(self) -> ComposeResult:
        yield KeysTable()

    async def recompose(self) -> None:
        """What Textual's KeyPanel calls when the screen's bindings change."""
        panel = self.parent
        if isinstance(panel, KeysPanel) and not panel.shown:
            self.stale = True
            return
        self.redraw()

    def redraw(self) -> None:
        """Draw the keys table again from the screen's active bindings."""
        self.stale = False
        self.query_one(KeysTable).keys_changed()


class KeysPanel(HelpPanel):
    """HelpPanel that starts hidden, does nothing while hidden, and overlays the screen."""

    DEFAULT_CSS = f"""
    KeysPanel {{ layer: {LAYER}; background: $surface; split: none; dock: right;
                 height: 1fr; margin-top: 1; }}
    KeysPanel #keys-hint {{ color: $text-muted; height: 1; text-align: right; }}
    """

    def __init__(self, *, shown: bool = False) -> None:
        super().__init__()
        self.display = shown
        self._help: str | None = None

    @property
    def shown(self) -> bool:
        """Is the panel shown?"""
        return self.display

    def compose(self) -> ComposeResult:
        yield Markdown(id="widget-help")
        yield Static("F1 hides · pgup/pgdn scroll", id="keys-hint")
        yield QuietKeyPanel(id="keys-help")

    def update_help(self, focused_widget: Widget | None) -> None:
        """Textual's update, made only while shown, and the help text parsed again only when
        it differs from the one shown. While hidden, the keys table of the newly focused
        widget is rendered ahead, at idle (``warm``), so F1 still draws it from the cache."""
        if not self.shown:
            if self.is_attached and self.screen.is_active:
                self.call_after_refresh(self.warm)
            return
        if not self.app.app_focus or not self.screen.is_active:
            return
        help_text = ""
        if focused_widget is not None:
            for node in focused_widget.ancestors_with_self:
                if isinstance(node, Widget) and node.HELP:
                    help_text = dedent(node.HELP.rstrip())
                    break
        self.set_class(bool(help_text), "-show-help")
        if help_text and help_text != self._help:
            self._help = help_text
            self.query_one("#widget-help", Markdown).update(help_text)

    async def show(self) -> None:
        """Show the panel, up to date with the focused widget and the screen's keys."""
        self.display = True
        self.update_help(self.screen.focused)
        keys = self.query_one(QuietKeyPanel)
        if keys.stale:
            keys.redraw()
        else:  # shown, the panel's pgup/pgdn take over the focused widget's page keys:
            self.query_one(KeysTable).keys_changed()  # drawn without them (no signal says so)

    def hide(self) -> None:
        self.display = False

    def scroll_keys(self, pages: int) -> None:
        """Scroll the keys list by ``pages`` pages (the app's pgup/pgdn while shown)."""
        keys = self.query_one(QuietKeyPanel)
        keys.scroll_to(y=keys.scroll_y + pages * max(keys.size.height - 1, 1), animate=False)

    def warm(self) -> None:
        """Render the keys table now, while hidden (the app idle), at the width the panel
        will have on this screen: the first F1 then draws it from the cache (rendering the
        table is the costliest part of showing the panel)."""
        screen = self.screen
        if not self.is_attached or not screen.size:
            return
        size = screen.size
        compositor = Compositor()
        compositor.reflow(self, Size(compat.box_width(self, size), size.height))
        # laid out on the screen, a long table gets a scrollbar: that width too
        table, keys = self.query_one(KeysTable), self.query_one(QuietKeyPanel)
        placed = compositor.full_map.get(table)
        if placed is not None:
            narrower = placed.region.size.with_width(
                placed.region.width - keys.styles.scrollbar_size_vertical)
            table.get_content_width(narrower, size)
            table._strips(narrower.width)


def panel_shown(panel: Widget) -> bool:
    """Is ``panel`` (a KeysPanel, or Textual's own HelpPanel) shown?"""
    return panel.shown if isinstance(panel, KeysPanel) else panel.display
