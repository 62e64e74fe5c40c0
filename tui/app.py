"""The loradeck app: one Textual mode per screen, a shared draft config and the current run.

Screens (one module each under tui/screens/) are switched with one key each: m Model, d Data,
l LoRA, t Train, c Chat, p Push, r Runs. The app imports only light modules: no torch,
transformers, peft, trl, datasets, bitsandbytes or accelerate (a test checks ``sys.modules``).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import events
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.message_pump import MessagePump
from textual.reactive import reactive, var
from textual.screen import Screen
from textual.widget import AwaitMount
from textual.worker import Worker, WorkerState

from loradeck import themes
from loradeck.engine.errors import LoradeckError, error_text
from loradeck.tui import settings, startup_trace
from loradeck.tui import textual_compat as compat
from loradeck.tui.draft_file import draft_path, load_draft
from loradeck.tui.modes import SCREENS
from loradeck.tui.palette import AppCommands
from loradeck.tui.screens import LoradeckScreen
from loradeck.tui.screens.model import ModelScreen
from loradeck.tui.textual_compat import active_app, typing_widget_classes

if TYPE_CHECKING:
    from loradeck.engine import config as cfg

log = logging.getLogger("loradeck.app")

GO = Binding.Group("screens", compact=True)
# Shown in the footer only where the letters are not (a focused field takes them): the footer
# shows one key per action, the first one active, so the letter hides its alt twin.
GO_ALT = Binding.Group("screens", compact=True)
HISTORY_LIMIT = 20
GC_IDLE_SECONDS = 1.0  # a full garbage collection waits for this long without a key
GC_EVERY = 20.0
GC_AT_MOST = 120.0
# Input first: while a person types into a field (a key within TYPING_WINDOW seconds, the
# focus in a typing widget), background drawing (a chat reply's update) waits for the frame
# that shows the latest key and runs right after it, in the gap before the next key, instead
# of holding a key up.
TYPING_WINDOW = 0.5
ECHO_GAP = 0.02  # a key's frame drawn this recently: the gap is now
PREPARE_AFTER = 0.2  # a hidden screen is laid out and drawn off the terminal this much later
DRAFT_READ_AFTER = 0.5  # the draft read at the latest this long after the first frame (the
# first screen may read it sooner: the Model screen does, once its body is drawn)
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
        screen = self.screen_class()
        _styled_with_current_css(screen)
        return screen

    def __repr__(self) -> str:
        return f"LazyScreen({self.module}.{self.name})"


def _styled_with_current_css(screen: Screen) -> None:
    """Mark a new screen as styled with the app's current CSS: it is styled as it mounts, so
    the full CSS reparse and restyle Textual runs for a screen it has not styled yet (once when
    the mode starts, and again at the screen's next showing, since its count is only set once
    it is mounted) would redo work already done. A theme switch still bumps the app's count
    and refreshes everything, as in Textual."""
    app = active_app.get(None)
    if app is not None and app.is_running and compat.has_screen_stacks(app):
        compat.mark_styled(screen, app)


MODE_SCREENS: dict[str, type[Screen] | LazyScreen] = {
    "model": ModelScreen,  # the first screen: imported with the app
    "data": LazyScreen("loradeck.tui.screens.data", "DataScreen"),
    "lora": LazyScreen("loradeck.tui.screens.lora", "LoraScreen"),
    "train": LazyScreen("loradeck.tui.screens.train", "TrainScreen"),
    "chat": LazyScreen("loradeck.tui.screens.chat", "ChatScreen"),
    "eval": LazyScreen("loradeck.tui.screens.eval", "EvalScreen"),
    "push": LazyScreen("loradeck.tui.screens.push", "PushScreen"),
    "runs": LazyScreen("loradeck.tui.screens.runs", "RunsScreen"),
}


def screen_class(mode: str) -> type[Screen]:
    """The Screen class of ``mode`` (importing its module if needed)."""
    entry = MODE_SCREENS[mode]
    return entry.screen_class if isinstance(entry, LazyScreen) else entry


def keys_panel_shown(screen: Screen) -> bool:
    """Is the keys panel (F1) shown on ``screen``?"""
    if "loradeck.tui.widgets.keys_panel" not in sys.modules:
        return any(panel.display for panel in screen.query("HelpPanel"))
    from loradeck.tui.widgets.keys_panel import panel_shown

    return any(panel_shown(panel) for panel in screen.query("HelpPanel"))


class _DraftVar(var):
    """``LoradeckApp.draft``: a var read from draft.yaml the first time it is read (so that
    loradeck.engine.config, pydantic and yaml load after the first frame, not before)."""

    def __get__(self, obj: Any, obj_type: Any = None) -> Any:
        value = super().__get__(obj, obj_type)
        if obj is not None and value is None:
            value = obj._initial_draft()
            obj.set_reactive(LoradeckApp.draft, value)
        return value


class LoradeckApp(App[None]):
    """Fine-tune LLMs with LoRA/QLoRA by keys alone."""

    TITLE = "loradeck"
    CSS_PATH = str(Path(__file__).with_name("app.tcss"))
    MODES: ClassVar[dict[str, type[Screen] | LazyScreen]] = MODE_SCREENS  # type: ignore
    DEFAULT_MODE = "model"
    COMMANDS = App.COMMANDS | {AppCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        # priority: handled as the key reaches the app, not after a trip through the focused
        # widget and back (behind whatever else the app is busy with); a focused input still
        # gets its letters (Textual leaves out the keys an input takes)
        *[Binding(key, f"go('{mode}')", label, id=f"go.{mode}", group=GO, priority=True,
                  tooltip=f"Go to the {label} screen") for mode, key, label in SCREENS],
        # the same from inside a field, where the letters are typed as text
        *[Binding(f"alt+{key}", f"go('{mode}')", label, id=f"go.alt.{mode}", group=GO_ALT,
                  key_display=f"alt+{key}" if i == 0 else key, priority=True,
                  tooltip=f"Go to the {label} screen, from inside a field too")
          for i, (mode, key, label) in enumerate(SCREENS)],
        Binding("escape", "back", "Back", id="app.back",
                tooltip="Leave the input, or return to the previous screen"),
        Binding("f1", "keys", "Keys", id="app.keys", show=False, priority=True,
                tooltip="Show or hide the keys of this screen"),
        # system: not listed (the panel says them itself), so showing the panel, which turns
        # them on, leaves the listed keys and the rendered table as they were
        Binding("pageup", "scroll_keys(-1)", "Keys up", id="app.keys.up", show=False,
                priority=True, system=True, tooltip="Scroll the keys panel up"),
        Binding("pagedown", "scroll_keys(1)", "Keys down", id="app.keys.down", show=False,
                priority=True, system=True, tooltip="Scroll the keys panel down"),
        Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True,
                tooltip="Quit (training runs keep going)"),
    ]

    draft: var[cfg.Config] = _DraftVar(None, init=False)
    """The config being edited (replace it with ``set_draft``; screens ``watch`` it). Read from
    draft.yaml (with loradeck.engine.config's pydantic and yaml) on first use, not before the first
    frame."""
    current_run_id: reactive[str | None] = reactive(None, init=False)
    """The run the Train, Chat and Push screens show."""

    def __init__(self, *, demo: bool = False, run_id: str | None = None,
                 draft: cfg.Config | None = None, tune_gc: bool = False) -> None:
        """``tune_gc``: full garbage collections at idle moments (``loradeck`` sets it; it
        changes the process-wide collector settings, so tests leave it off)."""
        self._history: list[str] = []
        self._switching = False
        if run_id is not None:
            self.DEFAULT_MODE = "train"  # type: ignore[misc]  # `attach RUN` opens on Train
        with startup_trace.part("Textual's App construction"):
            super().__init__()
        with startup_trace.part("themes registered"):
            themes.register_themes(self)
        with startup_trace.part("settings read"):
            saved_settings = settings.load_settings()
        saved = saved_settings.get("theme")
        start_theme = saved if saved in self.available_themes else themes.DEFAULT_THEME
        self._saved_theme = start_theme  # written only when the user picks another
        self.theme = start_theme
        keymap = saved_settings.get("keymap")
        if isinstance(keymap, dict):
            self.set_keymap({str(k): str(v) for k, v in keymap.items()})
        self._demo = demo
        self._startup_problem: LoradeckError | None = None
        self._first_frame_shown = False
        self._tune_gc = tune_gc
        self._last_key = 0.0
        self._key_unshown = False  # a key came and no frame has been drawn since
        self._key_shown_at = 0.0
        self._gap_waiters: list[asyncio.Future[None]] = []
        self._last_full_gc = 0.0
        self._after_next_frame: list[tuple[MessagePump, Callable[[], object]]] = []
        self.set_reactive(LoradeckApp.draft, draft)
        self.set_reactive(LoradeckApp.current_run_id, run_id)

    def _initial_draft(self) -> cfg.Config:
        """The draft at start: the demo config with ``--demo`` (saved), else draft.yaml
        (defaults, and the reason shown once mounted, when it is missing or invalid)."""
        from loradeck.engine import config as cfg

        if self._demo:
            draft = cfg.demo_config()
            self.set_reactive(LoradeckApp.draft, draft)
            self._save_draft(draft)
            return draft
        draft, self._startup_problem = load_draft()
        if self._startup_problem is not None and self.is_running:
            self.call_later(self._show_startup_problem)
        return draft

    def _show_startup_problem(self) -> None:
        problem, self._startup_problem = self._startup_problem, None
        if problem is not None:
            self.notify_error(problem, title="draft config ignored")

    # ---- shared state -------------------------------------------------------------------

    def set_draft(self, config: cfg.Config) -> None:
        """Replace the draft config and persist it to $LORADECK_HOME/draft.yaml."""
        self.draft = config
        self._save_draft(config)

    def _save_draft(self, config: cfg.Config) -> None:
        from loradeck.engine import config as cfg

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
        text = error_text(exc)
        if isinstance(exc, LoradeckError):
            title = title or f"{exc.kind} error"
        log.debug("error shown: %s", text)
        self.notify(text, title=title or "error", severity="error", timeout=8, markup=False)

    # ---- lifecycle ----------------------------------------------------------------------

    def on_mount(self) -> None:
        startup_trace.mark("app mounted")
        self.after_first_frame(self, self._settle)

    def after_first_frame(self, pump: MessagePump, callback: Callable[[], object]) -> None:
        """Call ``callback`` on ``pump`` (a widget, screen or the app) once the app's first
        frame has been drawn: start-up work that the first frame need not wait for."""
        if self._first_frame_shown:
            pump.call_later(callback)
        else:
            self._after_next_frame.append((pump, callback))

    def _display(self, screen: Screen, renderable: Any) -> None:
        # Textual's one place where a frame goes to the terminal: it releases the work queued
        # with ``after_next_frame`` (and, the first time, ``after_first_frame``) and the
        # waiters for the frame of a typed key.
        super()._display(screen, renderable)
        if renderable is None or compat.frames_held(self):
            return
        if self._key_unshown:
            self._key_unshown = False
            self._key_shown_at = time.monotonic()
            if self._typing_focused():  # else the waiters keep their own time (max_wait)
                waiters, self._gap_waiters = self._gap_waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
        if compat.app_running(self):
            if not self._first_frame_shown:
                startup_trace.mark("first frame")
            self._first_frame_shown = True
            queued, self._after_next_frame = self._after_next_frame, []
            for pump, callback in queued:
                pump.call_later(callback)

    def after_next_frame(self, pump: MessagePump, callback: Callable[[], object],
                         max_wait: float = 0.1) -> None:
        """Call ``callback`` (on ``pump``) once the next frame has gone to the terminal, or
        after ``max_wait`` seconds if none does (nothing was left to draw). Work split this
        way lands in separate frames, none of which holds a key up for all of it."""
        entry = (pump, callback)
        self._after_next_frame.append(entry)

        def no_frame() -> None:
            if entry in self._after_next_frame:
                self._after_next_frame.remove(entry)
                pump.call_later(callback)

        self.set_timer(max_wait, no_frame)

    @property
    def draft_read(self) -> bool:
        """Has the draft been read (and loradeck.engine.config loaded) yet?"""
        return getattr(self, "_reactive_draft", None) is not None

    def _settle(self) -> None:
        """After the first frame: soon read the draft (loradeck.engine.config, pydantic, yaml)
        if no screen has yet, and say when the saved one was ignored."""
        self.set_timer(DRAFT_READ_AFTER, self._read_draft)
        if compat.css_update_count(self.screen) < 0:  # styled as it mounted (see LazyScreen)
            compat.mark_styled(self.screen, self)
        self._premount_later(self.screen)
        if self._tune_gc:
            self._start_idle_gc()

    def _read_draft(self) -> None:
        _ = self.draft
        self._show_startup_problem()

    def _start_idle_gc(self) -> None:
        """Full garbage collections at idle moments instead of whenever Python decides: under
        load they stalled the UI for 100-270 ms each, several times a minute (a profile of the
        app benchmark). Start-up objects are frozen out of them, automatic full collections
        are turned off, and one runs when no key came for a second (at most every
        ``GC_EVERY`` seconds, and at least every ``GC_AT_MOST``)."""
        gc.freeze()
        young, middle, _old = gc.get_threshold()
        gc.set_threshold(young, middle, 1_000_000)
        self._last_full_gc = time.monotonic()
        self.set_interval(GC_EVERY / 4, self._full_gc_when_idle, name="idle-gc")

    def _full_gc_when_idle(self) -> None:
        now = time.monotonic()
        since = now - self._last_full_gc
        idle = now - self._last_key >= GC_IDLE_SECONDS
        if since >= GC_AT_MOST or (since >= GC_EVERY and idle):
            gc.collect()
            self._last_full_gc = time.monotonic()

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            self._last_key = time.monotonic()
            self._key_unshown = True
        await super().on_event(event)

    def typing(self) -> bool:
        """Is a person typing into a field: a key within the last ``TYPING_WINDOW`` seconds,
        and the focus in a typing widget (Input, TextArea, Select)?"""
        return time.monotonic() - self._last_key < TYPING_WINDOW and self._typing_focused()

    def in_input_gap(self) -> bool:
        """Is now a good moment for background drawing: nobody typing, or the latest typed
        key's frame just drawn (the next key is likely tens of ms away)?"""
        if not self.typing():
            return True
        return not self._key_unshown and time.monotonic() - self._key_shown_at < ECHO_GAP

    async def input_gap(self, max_wait: float) -> None:
        """Wait (at most ``max_wait`` seconds) for a moment when drawing holds no key up:
        at once when nobody is typing, else right after the frame that shows the next typed
        key. A background update (a chat reply's) calls it before drawing."""
        if self.in_input_gap():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._gap_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, max_wait)
        except TimeoutError:
            pass

    def watch_theme(self, theme: str) -> None:
        if theme and theme != getattr(self, "_saved_theme", theme):
            try:
                settings.save_theme(theme)
                self._saved_theme = theme
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
        elif action == "scroll_keys" and not keys_panel_shown(self.screen):
            return False  # pgup and pgdn go to the focused widget
        return True

    def _typing_focused(self) -> bool:
        focused = self.screen.focused
        if focused is None:
            return False
        classes = typing_widget_classes()
        return isinstance(focused, classes) or compat.in_select(focused)

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

    def switch_mode(self, mode: str) -> AwaitMount:
        """Textual's ``switch_mode``, less its two costs on every switch: the 50 ms
        ``delay_update`` before the new screen may be drawn (``delay_update`` is skipped while
        switching), and a restyle of every widget of the screen shown (its resume keeps the
        styles, ``LoradeckScreen.keep_styles_on_resume``). The screen is drawn at once, as one
        whole frame, from the layout it kept (``LoradeckScreen._screen_resized``). What can
        change styles while a screen is hidden (a theme switch) bumps the CSS update count,
        and that still refreshes all CSS, as in Textual."""
        if mode == self.current_mode or mode not in self.MODES:
            return super().switch_mode(mode)  # nothing to do, or UnknownModeError
        hidden = self.screen
        fresh = not compat.mode_started(self, mode)
        self._switching = True
        try:
            await_mount = super().switch_mode(mode)
        finally:
            self._switching = False
        if isinstance(self.screen, LoradeckScreen) and not fresh:
            self.screen.keep_styles_on_resume = True
        self._premount_later(self.screen)
        self.set_timer(PREPARE_AFTER, lambda: self.prepare_hidden_screen(hidden))
        return await_mount

    @property
    def switching(self) -> bool:
        """Is ``switch_mode`` switching screens right now?"""
        return self._switching

    def delay_update(self, delay: float = 0.05) -> None:
        """Textual's, except while switching screens (the new screen is drawn at once)."""
        if not self._switching:
            super().delay_update(delay)

    @contextmanager
    def batch_update(self) -> Iterator[None]:
        """Textual's, except for work started ``unbatched`` (a streamed reply's Markdown
        updates, which await and would hold every frame of the app back meanwhile)."""
        if compat.batch_update_skipped():
            yield
            return
        with super().batch_update():
            yield

    def prepare_hidden_screen(self, screen: Screen, rounds: int = 5) -> None:
        """Lay out the hidden ``screen`` and draw it into its widgets' caches, off the
        terminal, at a moment no key waits for its frame: what changed on it just before or
        after it was hidden (a reply's last words, its footer's keys) is then drawn already,
        and showing it again is one cheap frame instead of a layout and drawing at the key.
        What that layout sets off may ask for more: it looks again, ``rounds`` times at most."""
        if not (screen.is_attached and screen.stack_updates) or screen.is_current:
            return  # gone (the app closing), or shown again meanwhile
        if self._key_unshown:
            self.set_timer(PREPARE_AFTER / 2, lambda: self.prepare_hidden_screen(screen, rounds))
            return
        if compat.draw_hidden(screen, self.size) and rounds > 1:
            self.set_timer(PREPARE_AFTER, lambda: self.prepare_hidden_screen(screen, rounds - 1))

    def _premount_later(self, screen: Screen) -> None:
        """Mount the screen's hidden keys panel once it has been drawn and the app is idle."""
        if not screen.query("HelpPanel"):
            self.set_timer(0.5, lambda: self.premount_keys_panel(screen))

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

    async def action_keys(self) -> None:
        """Toggle the panel listing the keys of the focused widget and screen. The panel
        (loradeck.tui.widgets.keys_panel.KeysPanel) is mounted once per screen, hidden, after the
        screen is drawn; F1 then only shows or hides it."""
        if keys_panel_shown(self.screen):
            self.action_hide_help_panel()
        else:
            await self.action_show_help_panel()

    def action_command_palette(self) -> None:
        """Textual's palette, its search field keeping fast keys in order."""
        from textual.command import CommandPalette

        from loradeck.tui.palette import Palette

        if self.use_command_palette and not CommandPalette.is_open(self):
            self.push_screen(Palette(id="--command-palette"))

    def action_scroll_keys(self, pages: int) -> None:
        from loradeck.tui.widgets.keys_panel import KeysPanel

        for panel in self.screen.query(KeysPanel):
            if panel.shown:
                panel.scroll_keys(int(pages))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Textual's system commands; "Keys" shows or hides the panel as it is displayed now
        (a hidden panel stays mounted)."""
        shown = keys_panel_shown(screen)
        for command in super().get_system_commands(screen):
            if command.title == "Keys":
                command = SystemCommand(
                    "Keys", "Hide the keys and widget help panel" if shown else
                    "Show help for the focused widget and a summary of available keys",
                    self.action_hide_help_panel if shown else self.action_show_help_panel)
            yield command

    def action_hide_help_panel(self) -> None:
        """Hide the keys panel (if shown)."""
        from loradeck.tui.widgets.keys_panel import KeysPanel

        for panel in self.screen.query("HelpPanel"):
            if isinstance(panel, KeysPanel):
                panel.hide()
            else:
                panel.display = False

    async def action_show_help_panel(self) -> None:
        """Show the keys panel (mounted now if the screen has none yet)."""
        from loradeck.tui.widgets.keys_panel import KeysPanel

        panels = self.screen.query(KeysPanel)
        if panels:
            await panels.first().show()
        else:
            await self.screen.mount(KeysPanel(shown=True))

    def premount_keys_panel(self, screen: Screen) -> None:
        """Mount ``screen``'s hidden keys panel (once), so F1 later only shows it."""
        from loradeck.tui.widgets.keys_panel import KeysPanel

        if screen.is_attached and not screen.query(KeysPanel):
            panel = KeysPanel()
            screen.mount(panel)
            panel.call_after_refresh(panel.warm)

    def action_theme(self, name: str) -> None:
        """Switch to the theme ``name`` (kept for the next start)."""
        if name in self.available_themes:
            self.theme = name
            self.notify(f"theme: {name}", timeout=2)
