"""A Log that keeps following its newest line until the person scrolls up, and wraps long
lines at its width."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from rich.cells import cell_len
from rich.text import Text
from textual.events import Resize
from textual.widgets import Log

INDENT = "  "  # a wrapped line's continuation


class FollowLog(Log):
    """Textual's Log, following new lines whatever happens around it, long lines wrapped.

    Textual's Log scrolls to a new line only when it was at its end just before: when the
    widgets above it grow (a panel that appears when a run resumes) the log gets shorter, its
    end moves down, and from then on it stays where it was while lines arrive. Here it follows
    until the person scrolls up, and follows again once they scroll back to the end. Each write
    redraws the whole log, so lines that move up when old ones are dropped (``max_lines``) are
    drawn where they now are.

    Textual's Log cuts a line at its right edge ("continue with: lorad"); here a long line is
    wrapped at the log's width (by terminal cells, so wide characters count twice), its
    continuation indented, and wrapped again when the width changes.
    """

    def __init__(self, *, max_lines: int | None = None, id: str | None = None) -> None:
        super().__init__(max_lines=max_lines, id=id)
        self.following = True
        self.written: deque[str] = deque(maxlen=max_lines)  # the lines as given
        self._wrapped_at = 0

    def on_mount(self) -> None:
        self.watch(self, "scroll_y", self._scrolled, init=False)

    def _scrolled(self, scroll_y: float) -> None:
        self.following = scroll_y >= self.max_scroll_y

    def _wrap_width(self) -> int:
        return self.scrollable_content_region.width

    def wrap(self, line: str, width: int) -> list[str]:
        """``line`` as the rows it takes at ``width`` cells."""
        if width < 20 or cell_len(line) <= width:
            return [line]
        console = self.app.console
        first = Text(line).wrap(console, width, overflow="fold")[0].plain
        rest = Text(line[len(first):].strip()).wrap(console, width - len(INDENT),
                                                    overflow="fold")
        return [first.rstrip(), *(INDENT + row.plain.rstrip() for row in rest)]

    def write_lines(self, lines: Iterable[str], scroll_end: bool | None = None) -> FollowLog:
        lines = list(lines)
        self.written.extend(lines)
        width = self._wrap_width()
        self._wrapped_at = width
        rows = [row for line in lines for row in self.wrap(line, width)]
        follow = self.following if scroll_end is None else scroll_end
        super().write_lines(rows, scroll_end=False)  # a full refresh
        if follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        return self

    def clear(self) -> FollowLog:
        self.written.clear()
        super().clear()
        return self

    def on_resize(self, event: Resize) -> None:
        width = self._wrap_width()
        if self.written and width != self._wrapped_at:
            lines = list(self.written)
            super().clear()
            self.written.clear()
            self.write_lines(lines, scroll_end=self.following)
        if self.following:
            self.call_after_refresh(self.scroll_end, animate=False, x_axis=False)
