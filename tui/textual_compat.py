"""Every private Textual name the app uses, in one place (checked with Textual 8.2.8).

pyproject pins ``textual`` to ``CHECKED_WITH``. ``tests/app/test_textual_compat.py`` fails when
that version changes, when a name below is gone, when a private hook the app's widgets
override (``OVERRIDDEN``) changes its signature, or when a method whose body the app relies on
(``RELIED_ON``) changes its source. The rest of ``loradeck.tui`` reaches Textual's internals
only through this module.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from textual._compositor import Compositor
from textual._context import active_app
from textual.app import App
from textual.geometry import Size
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets._footer import FooterKey, FooterLabel, KeyGroup

if TYPE_CHECKING:
    from textual.widgets import DataTable

CHECKED_WITH = "8.2.8"

__all__ = ["CHECKED_WITH", "Compositor", "FooterKey", "FooterLabel", "KeyGroup",
           "active_app"]

_LAZY = {"BindingsTable": "textual.widgets._key_panel"}
"""Private classes imported on first use (their widgets are not needed for the first frame)."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

TYPING_WIDGETS = (("textual.widgets._input", "Input"), ("textual.widgets._text_area", "TextArea"),
                  ("textual.widgets._select", "Select"))
"""The widgets that take typed text, as (private module, class): looked up only once imported,
so the app does not import TextArea (and its document machinery) before its first frame."""

OVERRIDDEN: dict[str, str] = {
    "textual.app.App._display": "(self, screen: 'Screen', renderable: 'RenderableType | None')"
                                " -> 'None'",
    "textual.screen.Screen._on_screen_resume": "(self, event: 'events.ScreenResume') -> 'None'",
    "textual.screen.Screen._screen_resized": "(self, size: 'Size') -> 'None'",
    "textual.widgets.Input._watch_value": "(self, value: 'str') -> 'None'",
    "textual.widgets.Input._on_key": "(self, event: 'events.Key') -> 'None'",
    "textual.widgets.DataTable._render_cell": (
        "(self, row_index: 'int', column_index: 'int', base_style: 'Style', width: 'int', "
        "cursor: 'bool' = False, hover: 'bool' = False) -> 'SegmentLines'"),
    "textual.widgets.DataTable._clear_caches": "(self) -> 'None'",
}
"""Private hooks the app's classes override: dotted name -> the signature checked with."""

RELIED_ON: dict[str, str] = {
    # the app turns switch_mode's delay_update off and draws the new screen itself
    "textual.app.App.switch_mode":
        "0bea775929e2c79e3f6dffe12805e253b15f5314e02ad163c5464f16251e00b9",
    "textual.app.App.delay_update":
        "44f4c078fd32db176b2fda15fe09d8871f1f3eb6ba1274535c0d71cfe09693c1",
    # append's task is made as it is called, so ReplyChunk's ``unbatched`` context reaches it
    "textual.widgets.Markdown.append":
        "3b8e4ea53d2a616e95677bb992adc7727f0dd12e8f7c23734ea270924bf6575b",
    "textual.app.App.batch_update":
        "84f847d10163e85144cffdcb0cca12ebbf24eadb7bc3f1650f1d05af18fdf6f3",
}
"""Methods whose body the app's hooks rely on: dotted name -> sha256 of its source."""


def resolve(dotted: str) -> Any:
    """The object a dotted name (module, then attributes) names."""
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def source_sha(dotted: str) -> str:
    """sha256 of the source of the function a dotted name names."""
    return hashlib.sha256(inspect.getsource(resolve(dotted)).encode()).hexdigest()


# ---- the app ---------------------------------------------------------------------------------

def typing_widget_classes() -> tuple[type, ...]:
    """The typing widget classes imported so far (none of an unimported one can be focused)."""
    return tuple(getattr(sys.modules[mod], name) for mod, name in TYPING_WIDGETS
                 if mod in sys.modules)


def in_select(widget: Widget) -> bool:
    """Is ``widget`` part of a Select (its overlay list)?"""
    module = sys.modules.get("textual.widgets._select")
    return module is not None and isinstance(widget.parent, module.Select)


def frames_held(app: App) -> bool:
    """Is a batch update holding the app's frames back?"""
    return bool(app._batch_count)


def app_running(app: App) -> bool:
    """Has the app started its message loop (set before the first frame is drawn)?"""
    return bool(app._running)


def has_screen_stacks(app: App) -> bool:
    return bool(app._screen_stacks)


def mode_started(app: App, mode: str) -> bool:
    """Has ``mode``'s screen stack been made (its screen mounted once)?"""
    return mode in app._screen_stacks


# ---- styles ----------------------------------------------------------------------------------

def css_update_count(node: App | Screen) -> int:
    """The CSS generation a screen was last styled with (the app's: the current one)."""
    return node._css_update_count


def mark_styled(screen: Screen, app: App) -> None:
    """Mark ``screen`` as styled with the app's current CSS."""
    screen._css_update_count = app._css_update_count


# ---- layout and drawing ----------------------------------------------------------------------

def layout_stale(screen: Screen, size: Size) -> bool:
    """Must ``screen`` be laid out again before it is drawn at ``size``?"""
    return (screen._compositor.size != size or screen._layout_required
            or screen._scroll_required or bool(screen._layout_widgets))


def lay_out_hidden(screen: Screen, size: Size) -> None:
    """Lay a hidden screen out at ``size`` (not drawn)."""
    screen._refresh_layout(size)
    screen._layout_required = screen._scroll_required = False


def draw_hidden(screen: Screen, size: Size) -> bool:
    """Lay out (when stale) and draw a hidden screen into its widgets' caches, off the
    terminal. False when nothing changed since it was last drawn."""
    if layout_stale(screen, size):
        lay_out_hidden(screen, size)
    elif screen._dirty_widgets:
        screen._compositor.update_widgets(screen._dirty_widgets)
    else:
        return False
    screen._dirty_widgets.clear()
    screen._compositor.render_full_update()
    return True


def draw_whole_frame(screen: Screen, size: Size) -> None:
    """Draw ``screen`` as one frame of the whole screen: laid out again only when stale."""
    screen._compositor._dirty_regions.add(size.region)
    if layout_stale(screen, size):
        Screen._screen_resized(screen, size)
    else:
        screen._compositor_refresh()


def drop_repaint(screen: Screen) -> None:
    """Forget a whole-screen repaint asked for (the frame drawn already holds it)."""
    screen._repaint_required = False


def keep_layout(widget: Widget) -> None:
    """Forget a layout the widget asked for: it is drawn again, not laid out."""
    widget._layout_required = False


def box_width(widget: Widget, size: Size) -> int:
    """The width ``widget`` takes on a screen of ``size``."""
    box = widget._get_box_model(size, size, Fraction(size.width), Fraction(size.height))
    return int(box.width)


# ---- widgets ---------------------------------------------------------------------------------

def cell_key(table: DataTable, row_index: int, column_index: int) -> tuple:
    """What decides how a body cell of ``table`` looks, short of its width and style: its
    row index, column key, value, the hover cursor and the table's pseudo classes."""
    row_key = table._row_locations.get_key(row_index)
    column_key = table._column_locations.get_key(column_index)
    return (row_index, column_key, table._data[row_key][column_key], table._show_hover_cursor,
            table._pseudo_class_state)


def footer_ready(footer: Any) -> bool:
    """Has the Footer composed its keys once?"""
    return bool(footer._bindings_ready)


def key_disabled(key: FooterKey) -> bool:
    return bool(key._disabled)


def set_key_disabled(key: FooterKey, disabled: bool) -> None:
    key._disabled = disabled
    key.set_class(disabled, "-disabled")


_UNBATCHED: ContextVar[bool] = ContextVar("loradeck_unbatched", default=False)


@contextmanager
def unbatched() -> Iterator[None]:
    """Within: work started (tasks made) does not hold frames back with ``batch_update``
    (``LoradeckApp.batch_update`` reads ``batch_update_skipped``)."""
    token = _UNBATCHED.set(True)
    try:
        yield
    finally:
        _UNBATCHED.reset(token)


def batch_update_skipped() -> bool:
    """Was the running task started within ``unbatched``?"""
    return _UNBATCHED.get()


PRIVATE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "textual.app.App": ("_batch_count", "_running", "_screen_stacks", "_css_update_count",
                        "_display"),
    "textual.screen.Screen": (
        "_css_update_count", "_compositor", "_layout_required", "_scroll_required",
        "_layout_widgets", "_refresh_layout", "_dirty_widgets", "_compositor_refresh",
        "_repaint_required", "_screen_resized", "_on_screen_resume", "_get_box_model"),
    "textual._compositor.Compositor": ("_dirty_regions",),
    "textual.widgets.DataTable": ("_row_locations", "_column_locations", "_data",
                                  "_show_hover_cursor", "_pseudo_class_state", "_render_cell",
                                  "_clear_caches"),
    "textual.widgets.Input": ("_watch_value", "_layout_required"),
    "textual.widgets._footer.Footer": ("_bindings_ready",),
    "textual.widgets._footer.FooterKey": ("_disabled",),
}
"""Per class, the private names used here (the test checks each on a live instance)."""
