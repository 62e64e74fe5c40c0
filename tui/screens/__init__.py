"""The app's screens, one module each (model, data, lora, train, runs, chat, push).

``LoradeckScreen`` is the frame every screen shares: the navigation line on top, the footer
below, the screen's commands in the palette, and ``show_worker_error`` that the app's one
``Worker.StateChanged`` handler calls when a worker of the screen fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from textual import events
from textual.geometry import Size
from textual.message import Message
from textual.screen import Screen
from textual.worker import Worker, get_current_worker

from loradeck.tui import textual_compat as compat
from loradeck.tui.palette import ScreenCommands

if TYPE_CHECKING:
    from loradeck.engine import config as cfg
    from loradeck.tui.app import LoradeckApp


def changed_config(config: cfg.Config, changes: dict[str, Any], source: str = "form"
                   ) -> cfg.Config:
    """``config`` with dotted-key ``changes`` applied, validated (raises LoradeckError)."""
    from loradeck.engine import config as cfg

    data = config.to_dict()
    for key, value in changes.items():
        section, name = key.split(".", 1)
        data.setdefault(section, {})[name] = value
    return cfg.validate(data, source=source)


class LoradeckScreen(Screen[None]):
    """Base of every screen of the app: the navigation line on top, the footer below, the
    screen's commands in the palette, and the app's fast switch (drawn at once, as one whole
    frame, from the layout and styles it kept while hidden)."""

    MODE: ClassVar[str] = ""
    COMMANDS = {ScreenCommands}
    # The keys panel (F1) lies on a layer of its own, over the screen: showing it does not
    # lay the screen's widgets out again at a narrower width (loradeck.tui.widgets.keys_panel).
    DEFAULT_CSS = """
    LoradeckScreen { layers: default keys-panel; }
    """

    drawn_on_switch = False
    """Set as the app's switch drew this screen's whole frame."""
    keep_styles_on_resume = False
    """Set by the app's switch when this screen was shown before: its resume keeps the styles
    it has (a theme switch meanwhile refreshes all CSS anyway)."""

    def _screen_resized(self, size: Size) -> None:
        """Textual calls this as a switch shows the screen (and on a resize). On a switch, the
        screen just switched to is drawn at once as one frame of the whole screen (a partial
        frame would leave parts of the screen it replaces on the terminal); it is laid out
        again only if something asked for that while it was hidden, or the size changed."""
        if not (self.lapp_switching and self.is_attached and self.stack_updates):
            super()._screen_resized(size)
            return
        compat.draw_whole_frame(self, size)
        self.drawn_on_switch = True  # the resume's repaint is not needed

    @property
    def lapp_switching(self) -> bool:
        return self.lapp.switching

    def _on_screen_resume(self, event: events.ScreenResume) -> None:
        """Shown again. Runs before Textual's own resume handler: when the switch drew the
        whole screen already, the repaint that handler asks for is dropped, and when the
        screen was shown before, its styles are kept."""
        if self.keep_styles_on_resume:
            self.keep_styles_on_resume = False
            event.refresh_styles = False
        if self.drawn_on_switch:
            self.drawn_on_switch = False
            self.call_next(compat.drop_repaint, self)

    @property
    def lapp(self) -> LoradeckApp:
        return self.app  # type: ignore[return-value]

    @property
    def draft(self) -> cfg.Config:
        return self.lapp.draft

    def update_draft(self, changes: dict[str, Any]) -> cfg.Config:
        """Apply dotted-key changes to the app's draft (validated) and return the new draft."""
        config = changed_config(self.draft, changes)
        if config != self.draft:
            self.lapp.set_draft(config)
        return config

    def report(self, message: Message) -> None:
        """Post a worker's result to this screen, unless the worker was cancelled meanwhile
        (an exclusive worker of its group started after it: its result would be stale)."""
        if not get_current_worker().is_cancelled:
            self.post_message(message)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Forward worker state changes to the app's one handler (failures shown in place)."""
        self.lapp.on_worker_state_changed(event)

    def show_worker_error(self, worker: Worker, error: BaseException) -> None:
        """A worker of this screen failed: show it in place (screens override), else notify."""
        self.lapp.notify_error(error)
