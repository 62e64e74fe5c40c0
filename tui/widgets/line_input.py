"""An Input whose typing lays nothing out, and whose editing keys keep their order."""

from __future__ import annotations

from textual import events
from textual.widgets import Input

from loradeck.tui import textual_compat as compat


def _edit_keys() -> dict[str, str]:
    """Input's own bindings (End, Backspace, arrows, ...): key -> action."""
    keys: dict[str, str] = {}
    for binding in Input.BINDINGS:
        key, action = (binding.key, binding.action) if hasattr(binding, "key") else binding[:2]
        for one in key.split(","):
            keys[one.strip()] = action
    return keys


EDIT_KEYS = _edit_keys()


class OrderedEditKeys(Input):
    """An Input that runs its own editing keys (End, Backspace, arrows) where it receives
    them, so that keys arriving together keep their order (see LineInput)."""

    async def _on_key(self, event: events.Key) -> None:
        action = None if event.is_printable else EDIT_KEYS.get(event.key)
        if action is None:
            await super()._on_key(event)
            return
        event.stop()
        event.prevent_default()
        await self.run_action(action)


class LineInput(OrderedEditKeys):
    """Textual's Input, with its editing keys run in order, and less a layout of the whole
    screen at every key.

    Textual's Input inserts a printable key where it receives it, but an editing key (End,
    Backspace, Delete, the arrows) is a binding: it bubbles up to the app to be looked up, and
    keys that arrive together (fast typing, a paste over SSH) are then applied out of order:
    End BSpace 3 2 on "8" gave "83", not "32". Here the input runs its own bindings when it
    receives them.

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
