"""The app's screens, one module each (model, data, lora, train, runs, chat, push).

``LoradeckScreen`` is the frame every screen shares: the navigation line on top, the footer
below, the screen's commands in the palette, and ``show_worker_error`` that the app's one
``Worker.StateChanged`` handler calls when a worker of the screen fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from textual import events
from textual.screen import Screen
from textual.worker import Worker

from loradeck.engine.errors import LoradeckError
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


def error_line(exc: BaseException) -> str:
    """One line for a person: a LoradeckError's line, else the type and message."""
    if isinstance(exc, LoradeckError):
        return exc.line()
    return f"{type(exc).__name__}: {exc}"


class LoradeckScreen(Screen[None]):
    """Base of the Model, Data and LoRA screens."""

    MODE: ClassVar[str] = ""
    COMMANDS = {ScreenCommands}
    # The keys panel (F1) lies on a layer of its own, over the screen: showing it does not
    # lay the screen's widgets out again at a narrower width (loradeck.tui.widgets.keys_panel).
    DEFAULT_CSS = """
    LoradeckScreen { layers: default keys-panel; }
    """

    drawn_on_switch = False
    """Set by the app when it drew this screen's whole frame as it switched to it."""

    def _on_screen_resume(self, _event: events.ScreenResume) -> None:
        """Shown again. When the switch drew the whole screen already, Textual's own resume
        handler (which runs next) asks for another whole repaint: that one is dropped."""
        if self.drawn_on_switch:
            self.drawn_on_switch = False
            self.call_next(self._drop_resume_repaint)

    def _drop_resume_repaint(self) -> None:
        self._repaint_required = False

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

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Forward worker state changes to the app's one handler (failures shown in place)."""
        handler = getattr(self.app, "on_worker_state_changed", None)
        if callable(handler):
            handler(event)

    def show_worker_error(self, worker: Worker, error: BaseException) -> None:
        """A worker of this screen failed: show it in place (screens override), else notify."""
        self.lapp.notify_error(error)
