"""Command palette providers: every key binding as a command, themes, and screen commands.

- ``AppCommands`` (on the app): the app's bindings (go to a screen, back, keys, quit) and one
  ``Theme: NAME`` command per registered theme.
- ``ScreenCommands`` (on a screen's ``COMMANDS``): the screen's bindings that apply now, plus
  what the screen's optional ``palette_commands()`` yields as ``(name, help, callback)``.

A binding whose ``check_action`` says it does not apply (False or None) is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

from textual.actions import parse
from textual.app import ComposeResult
from textual.binding import Binding
from textual.command import (
    CommandInput,
    CommandList,
    CommandPalette,
    DiscoveryHit,
    Hit,
    Hits,
    Provider,
    SearchIcon,
)
from textual.containers import Horizontal, Vertical
from textual.dom import DOMNode
from textual.markup import escape
from textual.widgets import Button, LoadingIndicator

from loradeck.tui.widgets.line_input import OrderedEditKeys

Command = tuple[str, str, Callable[[], object]]


def binding_applies(node: DOMNode, action: str) -> bool:
    """Does ``action`` (as written in a Binding) apply now on ``node``?"""
    try:
        _target, name, params = parse(action)
    except Exception:
        return False
    if not hasattr(node, f"action_{name}") and not hasattr(node, f"_action_{name}"):
        return False
    try:
        return node.check_action(name, params) is True
    except Exception:
        return False


def binding_commands(node: DOMNode, bindings: Iterable[Binding]) -> list[Command]:
    """Commands for the shown, described bindings of ``node`` that apply now."""
    app = node.app
    out: list[Command] = []
    seen: set[str] = set()
    for binding in bindings:
        if not isinstance(binding, Binding) or not binding.description or binding.system:
            continue
        if binding.action in seen or not binding_applies(node, binding.action):
            continue
        seen.add(binding.action)
        key = app.get_key_display(binding)
        help_text = escape(f"{binding.tooltip or binding.description}  (key: {key})")
        out.append((binding.description, help_text,
                    partial(node.call_later, node.run_action, binding.action)))
    return out


def _bindings_of(node: DOMNode) -> list[Binding]:
    """The node's bindings with the user's keymap applied."""
    keymap = getattr(node.app, "_keymap", {}) or {}
    out = []
    for binding in Binding.make_bindings(type(node).BINDINGS):
        if binding.id and binding.id in keymap:
            binding = binding.with_key(keymap[binding.id].split(",")[0])
        out.append(binding)
    return out


class _ListProvider(Provider):
    """A provider over a list of (name, help, callback) computed when the palette opens."""

    def commands(self) -> list[Command]:  # pragma: no cover - overridden
        return []

    async def discover(self) -> Hits:
        for name, help_text, callback in self.commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self.commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, text=name, help=help_text)


# App actions Textual's own palette commands already offer (Quit, Keys).
SYSTEM_ACTIONS = ("quit", "keys")


class AppCommands(_ListProvider):
    """The app's own bindings and one command per theme."""

    def commands(self) -> list[Command]:
        app = self.app
        bindings = [b for b in _bindings_of(app) if b.action not in SYSTEM_ACTIONS]
        out = binding_commands(app, bindings)
        current = app.theme
        for name in sorted(app.available_themes):
            mark = " (current)" if name == current else ""
            out.append((f"Theme: {name}", escape(f"Switch to the {name} theme{mark}; kept "
                                                 "for next time"),
                        partial(app.call_later, app.run_action, f"theme('{name}')")))
        return out


class ScreenCommands(_ListProvider):
    """The screen's bindings that apply now and its ``palette_commands()``."""

    def commands(self) -> list[Command]:
        screen = self.screen
        out = binding_commands(screen, _bindings_of(screen))
        extra = getattr(screen, "palette_commands", None)
        if callable(extra):
            out.extend(extra())
        return out


class PaletteInput(CommandInput, OrderedEditKeys):
    """The palette's search field, its editing keys run in the order they were typed."""


class Palette(CommandPalette):
    """Textual's command palette, with a search field that keeps fast keys in order (abc,
    BSpace BSpace x gives ax, not ab)."""

    def compose(self) -> ComposeResult:
        with Vertical(id="--container"):
            with Horizontal(id="--input"):
                yield SearchIcon()
                yield PaletteInput(placeholder=self._placeholder, select_on_focus=False)
                if not self.run_on_select:
                    yield Button("\u25b6")
            with Vertical(id="--results"):
                yield CommandList()
                yield LoadingIndicator()
