"""A yes/no dialog over the current screen: ``ConfirmDialog(title, body)`` dismisses with
True (y, Enter on Yes) or False (n, Escape, No)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


class ConfirmDialog(ModalScreen[bool]):
    """Ask before doing something that cannot be taken back."""

    DEFAULT_CSS = """
    ConfirmDialog { align: center middle; }
    ConfirmDialog > Vertical {
        width: 70; max-width: 95%; height: auto; border: thick $warning; padding: 1 2;
        background: $surface;
    }
    ConfirmDialog #confirm-title { text-style: bold; color: $warning; }
    ConfirmDialog #confirm-body { margin: 1 0; }
    ConfirmDialog Horizontal { height: auto; align-horizontal: right; }
    ConfirmDialog Button { margin-left: 2; }
    """
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm-yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm-no"),
    ]

    def __init__(self, title: str, body: str, yes: str = "Yes") -> None:
        super().__init__()
        self.title_text, self.body, self.yes = title, body, yes

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, id="confirm-title")
            yield Static(self.body, id="confirm-body", markup=False)
            with Horizontal():
                yield Button(f"{self.yes} (y)", id="confirm-yes", variant="warning")
                yield Button("No (n)", id="confirm-no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#confirm-no", Button).focus()  # the safe answer is the default

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm-yes")


def remote_code_question(model: str, files: list[str]) -> tuple[str, str]:
    """Title and body of the dialog shown before a run with model.trust_remote_code starts."""
    named = "\n".join(f"  {f}" for f in files) if files else \
        "  (the model's own Python files; not downloaded yet)"
    return ("Run the model's own code?",
            f"model.trust_remote_code is true: loading {model} runs Python code that comes "
            f"with it, with your permissions on this machine:\n{named}\n\nOnly say yes for a "
            "model you trust.")


def confirm_remote_code(app: Any, config: Any, go: Callable[[bool], None]) -> None:
    """``go(False)`` at once, or for a model that brings its own code (or a GRPO run with the
    user's reward file) ``go(True)`` once the user has said yes in the dialog (nothing when
    they say no)."""
    from loradeck.engine.train.rewards import is_file_reward

    reward_files = [s for s in config.grpo.rewards if is_file_reward(s)] \
        if config.training.method == "grpo" else []
    if not config.model.trust_remote_code and not reward_files:
        go(False)
        return
    if config.model.trust_remote_code:
        from loradeck.engine.models.layout import remote_code_files

        files = remote_code_files(config.model.name, config.model.revision)
        title, body = remote_code_question(config.model.name, files)
    else:
        title, body = "", ""
    if reward_files:
        named = "\n".join(f"  {f}" for f in reward_files)
        title = title or "Run your reward code?"
        body += ("\n\n" if body else "") + (
            "grpo.rewards names Python functions: the training job imports and runs them "
            f"with your permissions on this machine:\n{named}")
    app.push_screen(ConfirmDialog(title, body, yes="Run it"),
                    lambda yes: go(True) if yes else None)
