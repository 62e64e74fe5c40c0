"""The Train screen's loss table: drawn as Textual's DataTable draws it, but a new row draws
only its own cells."""

from __future__ import annotations

import asyncio

from textual.app import App, ComposeResult
from textual.widgets import DataTable

from loradeck.tui.widgets.loss_table import LossTable

COLUMNS = (("step", 6), ("loss", 10), ("eval_loss", 10), ("lr", 9))


class Tables(App):
    CSS = "DataTable { width: 48; height: 10; }"
    AUTO_FOCUS = None  # neither table focused, so both draw their header alike

    def compose(self) -> ComposeResult:
        yield DataTable(id="plain", cursor_type="none", zebra_stripes=True)
        yield LossTable(id="loss", cursor_type="none", zebra_stripes=True)


def _row(step: int) -> tuple[str, str, str, str]:
    return str(step), f"{6.5 - step * 0.01:.4f}", "-", f"{2e-4 / step:.2e}"


def _lines(table: DataTable) -> list[list[tuple[str, object]]]:
    return [[(seg.text, seg.style) for seg in table.render_line(y)]
            for y in range(table.size.height)]


def test_loss_table_draws_what_datatable_draws_through_rows_edits_and_sorting():
    asyncio.run(_draws_the_same())


async def _draws_the_same() -> None:
    app = Tables()
    async with app.run_test(size=(100, 24)) as pilot:
        tables = [app.query_one("#plain", DataTable), app.query_one("#loss", LossTable)]
        for table in tables:
            for key, width in COLUMNS:
                table.add_column(key, key=key, width=width)

        async def each(change) -> None:
            for table in tables:
                change(table)
            await pilot.pause()
            plain, loss = (_lines(t) for t in tables)
            assert loss == plain

        for step in (5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60):
            await each(lambda t, s=step: t.add_row(*_row(s), key=str(s)))
            await each(lambda t: t.scroll_end(animate=False))
        await each(lambda t: t.update_cell("50", "eval_loss", "6.1234"))  # an eval loss came
        await each(lambda t: t.add_row(*_row(2), key="2"))  # out of order (a resumed run)
        await each(lambda t: t.sort("step", key=lambda step: int(step)))
        await each(lambda t: t.scroll_home(animate=False))
        app.theme = "textual-light"
        await each(lambda t: None)
        await each(lambda t: t.clear())
        await each(lambda t: t.add_row(*_row(1), key="1"))


class OneTable(App):
    CSS = Tables.CSS

    def __init__(self, table: type[DataTable]) -> None:
        super().__init__()
        self.table_class = table

    def compose(self) -> ComposeResult:
        yield self.table_class(cursor_type="none", zebra_stripes=True)


def test_a_new_row_draws_only_its_own_cells():
    drawn = {cls: asyncio.run(_cells_drawn_for_a_new_row(cls)) for cls in (DataTable, LossTable)}
    visible_rows = 9  # 10 lines: the header and 9 rows
    assert drawn[DataTable] >= len(COLUMNS) * visible_rows  # every visible cell again
    assert drawn[LossTable] == 2 * len(COLUMNS)  # the new row's cells and the header's


async def _cells_drawn_for_a_new_row(table_class: type[DataTable]) -> int:
    """Cells drawn (by Rich) when a 30th row comes to a table scrolled to its end."""
    app = OneTable(table_class)
    async with app.run_test(size=(100, 24)) as pilot:
        table = app.query_one(DataTable)
        for key, width in COLUMNS:
            table.add_column(key, key=key, width=width)
        for step in range(1, 30):
            table.add_row(*_row(step), key=str(step))
        table.scroll_end(animate=False)
        await pilot.pause()
        _lines(table)
        drawn = depth = 0
        render_lines = app.console.render_lines

        def counting(*args, **kwargs):  # a cell's padding draws its text: count the cell once
            nonlocal drawn, depth
            drawn += depth == 0
            depth += 1
            try:
                return render_lines(*args, **kwargs)
            finally:
                depth -= 1

        app.console.render_lines = counting
        try:
            table.add_row(*_row(30), key="30")
            table.scroll_end(animate=False)
            await pilot.pause()
            _lines(table)
        finally:
            app.console.render_lines = render_lines
        return drawn
