"""The Train screen's loss table: a DataTable that keeps its drawn cells when rows are added."""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.cache import LRUCache
from textual.widgets import DataTable

from loradeck.tui import textual_compat as compat


class LossTable(DataTable):
    """A DataTable whose cells stay drawn across new rows.

    Textual's DataTable (8.2.8) keys each drawn cell on a count of every change to the table,
    so a new row draws every visible cell again: the costliest frame of the Train screen, one
    a second while a run logs. Here a body cell's lines are kept under what decides them (its
    row index, column, value, width and style), so a new row draws only its own cells; the
    header, and any cell whose value, place or look changes, is drawn by DataTable itself.
    """

    def __init__(self, *args, **kwargs) -> None:
        # before DataTable's __init__, which clears the caches
        self._kept_cells: LRUCache[tuple, list[list[Segment]]] = LRUCache(4000)
        super().__init__(*args, **kwargs)

    def _render_cell(self, row_index: int, column_index: int, base_style: Style, width: int,
                     cursor: bool = False, hover: bool = False) -> list[list[Segment]]:
        if row_index < 0 or column_index < 0:
            return super()._render_cell(row_index, column_index, base_style, width, cursor,
                                        hover)
        key = (*compat.cell_key(self, row_index, column_index), base_style, width, cursor,
               hover)
        lines = self._kept_cells.get(key)
        if lines is None:
            lines = super()._render_cell(row_index, column_index, base_style, width, cursor,
                                         hover)
            self._kept_cells[key] = lines
        return lines

    def _clear_caches(self) -> None:  # rows cleared or moved
        super()._clear_caches()
        self._kept_cells.clear()

    def notify_style_update(self) -> None:  # a new theme or style
        self._kept_cells.clear()
        super().notify_style_update()
