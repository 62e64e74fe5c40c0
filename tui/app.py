"""The loradeck app: one Textual mode per screen, a shared draft config and the current run.

Screens (one module each under tui/screens/) are switched with one key each: m Model, d Data,
l LoRA, t Train, c Chat, p Push, r Runs. The app imports only light modules: no torch,
transformers, peft, trl, datasets, bitsandbytes or accelerate (a test checks ``sys.modules``).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.reactive import reactive, var
from textual.screen import Screen
from textual.widgets import Input, Select, TextArea
from textual.worker import Worker, WorkerState

import themes
from engine import config as cfg
from engine import paths
from engine.errors import LoradeckError
from tui import settings
from tui.palette import AppCommands
from tui.screens.model import ModelScreen

log = logging.getLogger("loradeck.app")

# The modes in key order: (mode name, key, label). Their screens are looked up in MODES.
SCREENS: tuple[tuple[str, str, str], ...] = (
    ("model", "m", "Model"),
    ("data", "d", "Data"),
    ("lora", "l", "LoRA"),
    ("train", "t", "Train"),
    ("chat", "c", "Chat"),
    ("push", "p", "Push"),
    ("runs", "r", "Runs"),
)
GO = Binding.Group("screens", compact=True)
HISTORY_LIMIT = 20
TYPING_WIDGETS = (Input, TextArea, Select)


class LazyScreen:
    """A MODES entry that imports its screen's module on first use, so the first frame does
    not wait for screens not yet shown. ``screen_class`` is the real class."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    @property
    def screen_class(self) -> type[Screen]:
        return getattr(importlib.import_module(self.module), self.name)

    def __call__(self) -> Screen:
        return self.screen_class()

    def __repr__(self) -> str:
        return f"LazyScreen({self.module}.{self.name})"


MODE_SCREENS: dict[str, type[Screen] | LazyScreen] = {
    "model": ModelScreen,  # the first screen: imported with the app
    "data": LazyScreen("tui.screens.data", "DataScreen"),
    "lora": LazyScreen("tui.screens.lora", "LoraScreen"),
    "train": LazyScreen("tui.screens.train", "TrainScreen"),
    "chat": LazyScreen("tui.screens.chat", "ChatScreen"),
    "push": LazyScreen("tui.screens.push", "PushScreen"),
    "runs": LazyScreen("tui.screens.runs", "RunsScreen"),
}


def screen_class(mode: str) -> type[Screen]:
    """The Screen class of ``mode`` (importing its module if needed)."""
    entry = MODE_SCREENS[mode]
    return entry.screen_class if isinstance(entry, LazyScreen) else entry


def draft_path() -> Path:
    """Where the config being edited is kept between sessions."""
    return paths.home() / "draft.yaml"


def load_draft() -> tuple[cfg.Config, LoradeckError | None]:
    """The saved draft; defaults (and the reason) when there is none or it is invalid."""
    p = draft_path()
    if not p.is_file():
        return cfg.Config(), None
    try:
        return cfg.load(p), None
    except LoradeckError as exc:
        return cfg.Config(), exc


class LoradeckApp(App[None]):
    """Fine-tune LLMs with LoRA/QLoRA by keys alone."""

    TITLE = "loradeck"
    CSS_PATH = str(Path(__file__).with_name("app.tcss"))
    MODES: ClassVar[dict[str, type[Screen] | LazyScreen]] = MODE_SCREENS  # type: ignore
    DEFAULT_MODE = "model"
    COMMANDS = App.COMMANDS | {AppCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        *[Binding(key, f"go('{mode}')", label, id=f"go.{mode}", group=GO,
                  tooltip=f"Go to the {label} screen") for mode, key, label in SCREENS],
        Binding("escape", "back", "Back", id="app.back",
                tooltip="Leave the input, or return to the previous screen"),
        Binding("f1", "keys", "Keys", id="app.keys", show=False,
                tooltip="Show or hide the keys of this screen"),
        Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True,
                tooltip="Quit (training runs keep going)"),
    ]

    draft: var[cfg.Config] = var(cfg.Config, init=False)
    """The config being edited (replace it with ``set_draft``; screens ``watch`` it)."""
    current_run_id: reactive[str | None] = reactive(None, init=False)
    """The run the Train, Chat and Push screens show."""

    def __init__(self, *, demo: bool = False, run_id: str | None = None,
                 draft: cfg.Config | None = None) -> None:
        self._history: list[str] = []
        if run_id is not None:
            self.DEFAULT_MODE = "train"  # type: ignore[misc]  # `attach RUN` opens on Train
        super().__init__()
        themes.register_themes(self)
        saved = settings.saved_theme()
        self.theme = saved if saved in self.available_themes else themes.DEFAULT_THEME
        keymap = settings.load_settings().get("keymap")
        if isinstance(keymap, dict):
            self.set_keymap({str(k): str(v) for k, v in keymap.items()})
        problem: LoradeckError | None = None
        if draft is None:
            draft, problem = (cfg.demo_config(), None) if demo else load_draft()
        self.set_reactive(LoradeckApp.draft, draft)
        self.set_reactive(LoradeckApp.current_run_id, run_id)
        self._startup_problem = problem
        if demo:
            self._save_draft(draft)

    # ---- shared state -------------------------------------------------------------------

    def set_draft(self, config: cfg.Config) -> None:
        """Replace the draft config and persist it to $LORADECK_HOME/draft.yaml."""
        self.draft = config
        self._save_draft(config)

    def _save_draft(self, config: cfg.Config) -> None:
        try:
            cfg.save(config, draft_path())
        except OSError as exc:
            self.notify_error(LoradeckError(f"cannot save the draft config: {exc.strerror}",
                                            kind="disk", where=str(draft_path())))

    def open_run(self, run_id: str) -> None:
        """Show ``run_id`` on the Train screen."""
        self.current_run_id = run_id
        self.action_go("train")

    def notify_error(self, exc: BaseException | str, *, title: str | None = None) -> None:
        """Show a failure as a message (one line for a person), never a crash."""
        if isinstance(exc, LoradeckError):
            text, title = exc.line(), title or f"{exc.kind} error"
        elif isinstance(exc, str):
            text = exc
        else:
            text, title = f"{type(exc).__name__}: {exc}", title or "error"
        log.debug("error shown: %s", text)
        self.notify(text, title=title or "error", severity="error", timeout=8, markup=False)

    # ---- lifecycle ----------------------------------------------------------------------

    def on_mount(self) -> None:
        if self._startup_problem is not None:
            self.notify_error(self._startup_problem, title="draft config ignored")

    def watch_theme(self, theme: str) -> None:
        if theme and theme != settings.saved_theme():
            try:
                settings.save_theme(theme)
            except OSError as exc:
                self.notify_error(f"cannot save the theme choice: {exc.strerror}")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place worker failures go: shown in place by the worker's screen
        (``show_worker_error``) or as a notification; never a crash.

        Worker.StateChanged does not bubble: screens forward theirs here (LoradeckScreen does).
        """
        if event.state is not WorkerState.ERROR:
            return
        worker = event.worker
        error = worker.error or RuntimeError("the task failed")
        node = worker.node
        screen = getattr(node, "screen", None) if node is not self else None
        handler = getattr(screen, "show_worker_error", None)
        if callable(handler):
            handler(worker, error)
        else:
            self.notify_error(error)

    # ---- actions ------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "go":
            mode = str(parameters[0]) if parameters else ""
            if mode not in self.MODES or mode == self.current_mode:
                return None
        elif action == "back":
            if not self._typing_focused() and not self._history:
                return None
        return True

    def _typing_focused(self) -> bool:
        focused = self.screen.focused
        return isinstance(focused, TYPING_WIDGETS) or (
            focused is not None and isinstance(focused.parent, Select))

    def action_go(self, mode: str) -> None:
        """Switch to the screen ``mode`` (one of SCREENS)."""
        if mode not in self.MODES:
            self.notify(f"the {mode} screen is not available", severity="warning")
            return
        if mode == self.current_mode:
            return
        try:
            screen_class(mode)
        except Exception as exc:  # a screen that cannot load is reported, never a crash
            self.notify_error(exc, title=f"cannot open the {mode} screen")
            return
        self._history.append(self.current_mode)
        del self._history[:-HISTORY_LIMIT]
        self.switch_mode(mode)

    def action_back(self) -> None:
        """Leave the focused input; otherwise return to the previous screen."""
        if self._typing_focused():
            self.screen.set_focus(None)
            self.refresh_bindings()
            return
        while self._history:
            mode = self._history.pop()
            if mode in self.MODES and mode != self.current_mode:
                self.switch_mode(mode)
                return

    def action_keys(self) -> None:
        """Toggle the panel listing the keys of the focused widget and screen."""
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def action_theme(self, name: str) -> None:
        """Switch to the theme ``name`` (kept for the next start)."""
        if name in self.available_themes:
            self.theme = name
            self.notify(f"theme: {name}", timeout=2)
