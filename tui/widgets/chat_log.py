"""A chat transcript pane: user turns as text, replies as Markdown streamed in place."""

from __future__ import annotations

import re
from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def reply_stats(done: dict[str, Any]) -> str:
    """``ttft 0.21 s · 38.4 tok/s · 57 tokens`` (+ why it ended, when not a natural stop)."""
    parts = []
    ttft = done.get("ttft_s")
    parts.append(f"ttft {ttft:.2f} s" if isinstance(ttft, (int, float)) else "ttft -")
    tps = done.get("tokens_per_second")
    if isinstance(tps, (int, float)):
        parts.append(f"{tps:.1f} tok/s")
    if isinstance(done.get("tokens"), int):
        parts.append(f"{done['tokens']} tokens")
    reason = done.get("finish_reason")
    if reason in ("cancelled", "length"):
        parts.append("stopped" if reason == "cancelled" else "hit max new tokens")
    return " · ".join(parts)


class UserTurn(Static):
    """What the user sent (plain text, no markup)."""

    DEFAULT_CSS = """
    UserTurn { margin: 1 0 0 0; padding: 0 1; background: $boost; color: $text;
               text-style: bold; }
    """

    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False)
        self.text = text


class ReplyView(Vertical):
    """One reply: Markdown (streamed with ``Markdown.get_stream``) and a stats line."""

    DEFAULT_CSS = """
    ReplyView { height: auto; padding: 0 0 0 1; }
    ReplyView > Markdown { margin: 0; padding: 0; background: transparent; }
    ReplyView > .reply-stats { color: $text-muted; height: auto; padding: 0 1; }
    ReplyView.-error > .reply-stats { color: $text-error; }
    """

    def __init__(self, text: str = "") -> None:
        super().__init__()
        self._initial = text
        self.text = text
        self.stats = ""
        self.finished = False
        self.done: dict[str, Any] = {}

    def compose(self) -> ComposeResult:
        yield Markdown(self._initial, classes="reply-text")
        yield Static("…", classes="reply-stats", markup=False)

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    def stream(self) -> MarkdownStream:
        """A stream that batches fragments into the Markdown (no full re-render per token)."""
        return Markdown.get_stream(self.markdown)

    def record(self, fragment: str) -> str:
        """Keep the reply's text as it streams; returns the fragment made safe to draw
        (control characters a model may emit are dropped)."""
        fragment = _CONTROL.sub("", fragment)
        self.text += fragment
        return fragment

    def finish(self, stats: str, done: dict[str, Any] | None = None) -> None:
        """The reply ended: show ``stats`` (and keep the worker's ``done`` reply)."""
        self.finished = True
        self.done = dict(done or {})
        self.stats = stats
        self.query_one(".reply-stats", Static).update(stats)

    def fail(self, message: str) -> None:
        self.finished = True
        self.stats = message
        self.add_class("-error")
        self.query_one(".reply-stats", Static).update(message)


class ChatPane(VerticalScroll):
    """A titled transcript (``base`` or ``tuned``) that follows new text."""

    DEFAULT_CSS = """
    ChatPane { width: 1fr; height: 1fr; border: round $panel; padding: 0 1; }
    ChatPane:focus-within { border: round $primary; }
    ChatPane > .pane-hint { color: $text-muted; }
    """

    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = title

    def on_mount(self) -> None:
        self.anchor()

    async def add_user(self, text: str) -> UserTurn:
        turn = UserTurn(text)
        await self.mount(turn)
        return turn

    async def add_reply(self, text: str = "") -> ReplyView:
        reply = ReplyView(text)
        await self.mount(reply)
        self.anchor()
        return reply

    def replies(self) -> list[ReplyView]:
        return list(self.query(ReplyView))

    async def clear(self) -> None:
        await self.remove_children()
