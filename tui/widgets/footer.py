"""A Footer that redraws only when the keys it shows change (moving focus through a form
would otherwise rebuild it at every tab)."""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer


class KeysFooter(Footer):
    """Footer(compact) that skips the rebuild when the shown keys are the same."""

    def __init__(self) -> None:
        super().__init__(compact=True)
        self._shown: tuple | None = None

    def _signature(self, screen: Screen) -> tuple:
        app = screen.app
        return tuple((key, b.binding.action, b.binding.description, b.enabled,
                      app.get_key_display(b.binding))
                     for key, b in screen.active_bindings.items() if b.binding.show)

    def bindings_changed(self, screen: Screen) -> None:
        if self.is_attached and screen is self.screen and screen.app.app_focus:
            shown = self._signature(screen)
            if shown == self._shown and self._bindings_ready:
                return
            self._shown = shown
        super().bindings_changed(screen)
