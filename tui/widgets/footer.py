"""A Footer that rebuilds its keys only when a key it must show has no widget yet: moving focus
through a form, a focused input hiding the one-letter keys, or a key becoming (un)available
shows, hides or greys the keys in place (Textual's Footer recomposes all of its keys, and
restyles them, on every change of the screen's bindings)."""

from __future__ import annotations

from textual.events import Resize
from textual.screen import Screen
from textual.widgets import Footer

from loradeck.tui import textual_compat as compat
from loradeck.tui.textual_compat import FooterKey, FooterLabel, KeyGroup


class KeysFooter(Footer):
    """Footer(compact) that skips the rebuild when the shown keys are the same, and otherwise
    shows, hides and greys the keys it has when it can."""

    DEFAULT_CSS = """
    KeysFooter.-compact FooterLabel {
        margin: 0 1 0 0;
    }
    """

    PALETTE_MIN_WIDTH = 100
    """Narrower, the palette key (ctrl+p, also listed by F1) gives its room to the screen's."""

    def __init__(self) -> None:
        super().__init__(compact=True)
        self._shown: tuple | None = None

    def compose(self):
        """Textual's keys, the palette key among them only when the terminal is wide enough
        (decided before the first frame: a resize event after it came too late for a frame
        drawn in between)."""
        self.set_reactive(Footer.show_command_palette,
                          self.app.size.width >= self.PALETTE_MIN_WIDTH)
        yield from super().compose()

    def on_resize(self, event: Resize) -> None:
        wide = event.size.width >= self.PALETTE_MIN_WIDTH
        if self.show_command_palette != wide:
            self.show_command_palette = wide

    def _signature(self, screen: Screen) -> tuple:
        app = screen.app
        first: dict[str, tuple] = {}  # one key per action, as the footer shows them (the
        for key, b in screen.active_bindings.items():  # letter before its alt twin)
            if b.binding.show and b.binding.action not in first:
                first[b.binding.action] = (key, b.binding.action, b.binding.description,
                                           b.enabled, app.get_key_display(b.binding))
        return tuple(first.values())

    def bindings_changed(self, screen: Screen) -> None:
        if self.is_attached and screen is self.screen and screen.app.app_focus:
            shown = self._signature(screen)
            if shown == self._shown and compat.footer_ready(self):
                return
            if compat.footer_ready(self) and self._update_in_place(shown):
                self._shown = shown
                return
            self._shown = shown
        super().bindings_changed(screen)

    def _update_in_place(self, shown: tuple) -> bool:
        """Show, hide and grey the keys already composed when every key to show is among them
        (e.g. a focused input hides the one-letter keys, and Esc brings them back): no rebuild.
        False when a key to show has no widget yet (the footer is then rebuilt)."""
        all_keys = list(self.query(FooterKey))
        keys = [k for k in all_keys if not k.has_class("-command-palette")]
        if not keys:
            return False
        wanted = {(key, action): on for key, action, _desc, on, _disp in shown}
        if not set(wanted) <= {(k.key, k.action) for k in all_keys}:
            return False
        for key in keys:
            on = wanted.get((key.key, key.action))
            key.display = on is not None
            if on is not None and compat.key_disabled(key) != (not on):
                compat.set_key_disabled(key, not on)
        # a group whose keys are all hidden is hidden with its label (the label follows it)
        children = list(self.children)
        for i, child in enumerate(children):
            if isinstance(child, KeyGroup):
                any_shown = any(k.display for k in child.query(FooterKey))
                child.display = any_shown
                if i + 1 < len(children) and isinstance(children[i + 1], FooterLabel):
                    children[i + 1].display = any_shown
        return True
