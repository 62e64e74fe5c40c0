"""A Log that keeps following its newest line until the person scrolls up."""

from __future__ import annotations

from collections.abc import Iterable

from textual.events import Resize
from textual.widgets import Log


class FollowLog(Log):
    """Textual's Log, following new lines whatever happens around it.

    Textual's Log scrolls to a new line only when it was at its end just before: when the
    widgets above it grow (a panel that appears when a run resumes) the log gets shorter, its
    end moves down, and from then on it stays where it was while lines arrive. Here it follows
    until the person scrolls up, and follows again once they scroll back to the end. Each write
    redraws the whole log, so lines that move up when old ones are dropped (``max_lines``) are
    drawn where they now are.
    """

    def __init__(self, *, max_lines: int | None = None, id: str | None = None) -> None:
        super().__init__(max_lines=max_lines, id=id)
        self.following = True

    def on_mount(self) -> None:
        self.watch(self, "scroll_y", self._scrolled, init=False)

    def _scrolled(self, scroll_y: float) -> None:
        self.following = scroll_y >= self.max_scroll_y

    def write_lines(self, lines: Iterable[str], scroll_end: bool | None = None) -> FollowLog:
        follow = self.following if scroll_end is None else scroll_end
        super().write_lines(lines, scroll_end=False)  # a full refresh
        if follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        return self

    def on_resize(self, event: Resize) -> None:
        if self.following:
            self.call_after_refresh(self.scroll_end, animate=False, x_axis=False)
