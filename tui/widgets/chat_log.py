"""A chat transcript pane: user turns as text, replies as Markdown streamed in place."""

from __future__ import annotations

import asyncio
import re

from textual.app import ComposeResult
from textual.await_complete import AwaitComplete
from textual.containers import Vertical, VerticalScroll
from textual.events import Resize
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Markdown, Static

from loradeck.engine.serve.replies import Finished
from loradeck.engine.serve.transcript import Side, Turn
from loradeck.tui import textual_compat as compat
from loradeck.tui.textual_compat import Compositor

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


# A new chunk may start after a blank line when the next line opens a plain paragraph (not a
# list item, quote, table, heading, fence or indented continuation).
_BLANK = re.compile(r"\n[ \t]*\n+")
_PLAIN_START = re.compile(r"[^\s\-*+>|#\d`~<=_\[!]")
CHUNK_BLOCKS = 1


def _open_fence(text: str, end: int) -> bool:
    """Is a code fence open at ``end`` in ``text``?"""
    return bool(text.count("```", 0, end) % 2 or text.count("~~~", 0, end) % 2)


def split_chunks(chunk: str, text: str, blocks: int = CHUNK_BLOCKS) -> list[str]:
    """``text`` (coming after ``chunk``) cut where new Markdown chunks may start.

    The first piece continues ``chunk``; each further piece opens a new chunk. A cut is made
    once the chunk holds ``blocks`` blank-line-separated blocks, at a blank line followed by a
    plain paragraph outside any code fence, so each chunk renders as it would inside one
    document (finished chunks are then left alone by the layout: their arrangement is cached).
    """
    pieces: list[str] = []
    current, rest = chunk, text
    while True:
        combined = current + rest
        cut = None
        seen = 0
        for m in _BLANK.finditer(combined):
            seen += 1
            at = m.end()
            if (seen >= blocks and at >= len(current) and at < len(combined)
                    and _PLAIN_START.match(combined, at) and not _open_fence(combined, at)):
                cut = at - len(current)
                break
        if cut is None:
            pieces.append(rest)
            return pieces
        pieces.append(rest[:cut])
        current, rest = "", rest[cut:]


def render_to_strips(widget: Widget) -> list[Strip] | None:
    """``widget`` and everything in it drawn as lines, as the screen draws them now (None when
    it is not laid out)."""
    width, height = widget.outer_size
    if not width or not height:
        return None
    compositor = Compositor()
    compositor.reflow(widget, Size(width, height))
    return compositor.render_strips(Size(width, height))


class FrozenMarkdown(Widget):
    """The finished chunks of a streamed reply: the lines their Markdown drew, as one widget.

    A Markdown widget holds one widget per block, and every layout pass of the screen walks
    them all; once a chunk is finished its lines are kept here instead (same text, same
    look), and the finished chunks after it are added to it (``extend``), so a reply's
    finished text is one widget. When the width or the theme changes, it turns back into a
    Markdown widget.
    """

    DEFAULT_CSS = """
    FrozenMarkdown { height: auto; width: 1fr; }
    """

    def __init__(self, source: str, strips: list[Strip], *, classes: str | None = None) -> None:
        super().__init__(classes=classes)
        self.source = source
        self._strips = strips
        self._width = max((s.cell_length for s in strips), default=0)

    def on_mount(self) -> None:
        self.watch(self.app, "theme", lambda _: self.thaw(), init=False)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._strips)

    def get_content_width(self, container: Size, viewport: Size) -> int:
        return self._width

    def extend(self, source: str, strips: list[Strip], *, before: bool = False) -> None:
        """Take in the next (or, ``before``, the previous) finished chunk's text and lines:
        a reply's finished chunks stay one widget however long it grows."""
        if before:
            self.source = source + self.source
            self._strips = strips + self._strips
        else:
            self.source += source
            self._strips = self._strips + strips
        self._width = max(self._width, max((s.cell_length for s in strips), default=0))
        self.refresh(layout=True)

    def render_line(self, y: int) -> Strip:
        if 0 <= y < len(self._strips):
            return self._strips[y]
        return Strip.blank(self.size.width)

    def on_resize(self, event: Resize) -> None:
        if event.size.width != self._width:
            self.thaw()

    def thaw(self) -> None:
        """Back to a Markdown widget (drawn again at the new width or in the new theme)."""
        if self.parent is None or not self.is_attached or not self.display:
            return  # a hidden one is being merged into the one before it
        markdown = ReplyChunk(self.source)
        with self.app.batch_update():
            self.parent.mount(markdown, after=self)
            self.remove()
        markdown.finish()  # frozen again once drawn at the new width


class ReplyChunk(Markdown):
    """One chunk of a streamed reply (a Markdown); once ``finished`` and drawn at its width,
    its reply keeps it as a FrozenMarkdown."""

    def __init__(self, markdown: str = "", *, classes: str | None = "reply-text") -> None:
        super().__init__(markdown, classes=classes)
        self.finished = False

    def append(self, markdown: str) -> AwaitComplete:
        """Textual's ``Markdown.append``, run ``unbatched``: its ``batch_update`` around the
        awaited update of the last block and mount of the new ones is skipped (a batch held
        across awaits holds every frame of the app back meanwhile: a key pressed then waited
        for the whole update)."""
        with compat.unbatched():
            return super().append(markdown)

    def finish(self) -> None:
        """No more text comes to this chunk: freeze it after the next refresh (or once it has
        a size, if it has none yet)."""
        self.finished = True
        self.call_after_refresh(self._freeze)

    def on_resize(self) -> None:
        if self.finished:
            self.call_after_refresh(self._freeze)

    async def _freeze(self) -> None:
        reply = self.parent
        if isinstance(reply, ReplyView):
            await reply.freeze(self)


class ReplyStream:
    """Streams a reply's fragments into its Markdown a few times a second, not per token.

    - Coalesced: the first fragment is drawn at once, then at most one update every
      ``interval`` seconds (each update costs a layout pass of the screen).
    - Chunked: the reply is cut at every safe break (``split_chunks``); only the last chunk
      is a live Markdown, re-parsed and re-arranged, and the finished ones are merged into
      one FrozenMarkdown, so an update costs the same at the end of a long reply as at its
      start.
    - Input first: while a person types into a field, an update waits for the frame that
      shows the next typed key and runs right after it (``LoradeckApp.input_gap``), so it
      does not hold a key up.
    - Idle when hidden: while the reply's screen is not shown nothing is drawn; the text waits
      and goes in with one update once it is shown. ``stop()`` draws what is left.
    """

    INTERVAL = 0.3

    def __init__(self, reply: ReplyView, interval: float = INTERVAL) -> None:
        self.reply = reply
        self.markdown = reply.query_children(Markdown).last()
        self.interval = interval
        self.updates = 0
        """Updates made to the Markdown so far."""
        self._pending: list[str] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> ReplyStream:
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return self

    @property
    def pending(self) -> str:
        """Text written but not drawn yet."""
        return "".join(self._pending)

    async def write(self, fragment: str) -> None:
        """Add ``fragment`` at the end of the reply (drawn with the next update)."""
        if self._stopping:
            raise RuntimeError("the reply stream has stopped")
        if fragment:
            self._pending.append(fragment)
            if self.updates == 0:
                self._wake.set()  # the first words show at once

    def _shown(self) -> bool:
        try:
            return self.reply.screen.is_current
        except Exception:  # not mounted (any more)
            return False

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._pending and (self._stopping or self._shown()):
                if not self._stopping:
                    await self._input_gap()
                    if not self._shown():  # hidden meanwhile: wait until shown again
                        continue
                await self._flush()

    async def _input_gap(self) -> None:
        """While a person types, wait for the frame that shows the next key (see
        ``LoradeckApp.input_gap``): the update then runs between two keys."""
        gap = getattr(self.reply.app, "input_gap", None)
        if gap is not None:
            await gap(self.interval)

    async def _flush(self) -> None:
        text = "".join(self._pending)
        self._pending.clear()
        if not text or not self.reply.is_attached:
            return
        self.updates += 1
        first, *more = split_chunks(self.markdown.source, text)
        if first:
            await self.markdown.append(first)
        for piece in more:
            finished = self.markdown
            self.markdown = await self.reply.add_chunk()
            await self.markdown.append(piece)
            if isinstance(finished, ReplyChunk):
                finished.finish()

    async def stop(self) -> None:
        """Draw what is left and end the stream."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._pending:
            await self._flush()


class UserTurn(Static):
    """What the user sent (plain text, no markup), in its own block labelled "you": turns stand
    apart from replies at a glance, in a long chat or a screenshot."""

    DEFAULT_CSS = """
    UserTurn { margin: 1 0 0 0; padding: 0 1; border: round $primary;
               border-title-color: $primary; border-title-style: bold;
               background: $primary 10%; color: $text; }
    """

    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False)
        self.text = text
        self.border_title = "you"


class ReplyView(Vertical):
    """One reply: Markdown (streamed with ``ReplyStream``) and a stats line."""

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
        self.done: Finished | None = None

    def compose(self) -> ComposeResult:
        yield ReplyChunk(self._initial)
        yield Static("…", classes="reply-stats", markup=False)

    @property
    def markdown(self) -> Markdown:
        """The reply's (first) Markdown widget; a long streamed reply has several
        (``chunks``)."""
        return self.query_one(Markdown)

    def chunks(self) -> list[Markdown | FrozenMarkdown]:
        """The widgets the reply is drawn in, in order: Markdown, or FrozenMarkdown for a
        finished chunk of a long streamed reply."""
        return [w for w in self.children if isinstance(w, (Markdown, FrozenMarkdown))]

    async def freeze(self, chunk: Markdown) -> None:
        """Keep the finished ``chunk`` as the lines it draws (one widget instead of one per
        block), added to the FrozenMarkdown beside it when there is one drawn at the same
        width; left as it is while it is not laid out (a ReplyChunk tries again once it is
        resized)."""
        if chunk.parent is not self or not chunk.is_attached:
            return
        strips = render_to_strips(chunk)
        if strips is None or len(strips) != chunk.outer_size.height:
            return
        width = max((s.cell_length for s in strips), default=0)
        before, after = self._frozen_beside(chunk, -1, width), self._frozen_beside(chunk, 1, width)
        if before is not None or after is not None:
            # merged into the finished chunks beside it: no widget mounted, one removed
            with self.app.batch_update():  # no await inside: a batch holds every frame back
                if before is not None:
                    before.extend(chunk.source, strips)
                    if after is not None:
                        before.extend(after.source, after._strips)
                        after.display = False
                else:
                    after.extend(chunk.source, strips, before=True)
                chunk.display = False
            await chunk.remove()
            if before is not None and after is not None:
                await after.remove()
            return
        frozen = FrozenMarkdown(chunk.source, strips, classes="reply-text")
        frozen.display = False
        await self.mount(frozen, after=chunk)
        if chunk.parent is not self:
            await frozen.remove()
            return
        with self.app.batch_update():  # no await inside: a batch holds every frame back
            frozen.display = True
            chunk.display = False
        await chunk.remove()

    def _frozen_beside(self, chunk: Widget, step: int, width: int) -> FrozenMarkdown | None:
        """The FrozenMarkdown right before (``step`` -1) or after (1) ``chunk``, when it was
        drawn at ``width``."""
        children = list(self.children)
        at = children.index(chunk) + step
        if 0 <= at < len(children):
            beside = children[at]
            if (isinstance(beside, FrozenMarkdown) and beside.display
                    and beside._width == width):
                return beside
        return None

    @property
    def source(self) -> str:
        """The Markdown drawn so far (all chunks)."""
        return "".join(m.source for m in self.chunks())

    async def add_chunk(self) -> Markdown:
        """Mount an empty Markdown after the last chunk (a streamed reply's next chunk)."""
        chunk = ReplyChunk()
        await self.mount(chunk, before=self.query_one(".reply-stats"))
        return chunk

    def stream(self) -> ReplyStream:
        """A stream that coalesces fragments into the Markdown (see ``ReplyStream``)."""
        return ReplyStream(self).start()

    def record(self, fragment: str) -> str:
        """Keep the reply's text as it streams; returns the fragment made safe to draw
        (control characters a model may emit are dropped)."""
        fragment = _CONTROL.sub("", fragment)
        self.text += fragment
        return fragment

    def finish(self, done: Finished) -> None:
        """The reply ended: keep the worker's Finished and show its figures."""
        self.finished = True
        self.done = done
        self.stats = stats = done.stats()
        self.query_one(".reply-stats", Static).update(stats)

    def fail(self, message: str) -> None:
        self.finished = True
        self.stats = message
        self.add_class("-error")
        self.query_one(".reply-stats", Static).update(message)


class ChatPane(VerticalScroll):
    """A titled transcript (``base`` or ``tuned``) that follows new text. It owns its one
    conversation (``conversation``: the turns answered): what it draws and what a request
    sends both come from it, and a turn that fails or is stopped leaves both at once."""

    DEFAULT_CSS = """
    ChatPane { width: 1fr; height: 1fr; border: round $panel; padding: 0 1; }
    ChatPane:focus-within { border: round $primary; }
    ChatPane > .pane-hint { color: $text-muted; }
    """

    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = title
        self.conversation = Side(title)

    def on_mount(self) -> None:
        self.anchor()

    def request(self, prompt: str, system: str | None) -> list[dict[str, str]]:
        """The messages to send for ``prompt``: the system prompt, the turns answered so far
        and the new question."""
        return self.conversation.messages(system) + [{"role": "user", "content": prompt}]

    def answered(self, prompt: str, reply: ReplyView) -> None:
        """The reply to ``prompt`` finished: the turn joins the conversation."""
        self.conversation.turns += [Turn("user", prompt),
                                    Turn("assistant", reply.text, reply.stats)]

    async def withdraw(self, *widgets: Widget) -> None:
        """A question whose reply failed or was stopped: gone from the view, as it never
        joined the conversation."""
        for widget in widgets:
            await widget.remove()

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

    def side(self) -> Side:
        """The pane's conversation under its title as shown, for saving."""
        return Side(str(self.border_title or ""), list(self.conversation.turns))

    async def clear(self) -> None:
        """A new conversation: nothing shown, nothing sent."""
        self.conversation.turns.clear()
        await self.remove_children()
