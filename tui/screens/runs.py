"""The Runs screen: every run in the store with its phase, progress, last loss, place in the
queue and GPUs; enter reattaches to one (the Train view is rebuilt from its events file);
space marks runs and v compares the marked ones (the Compare screen); a adds the draft to the
queue, delete cancels a waiting entry, [ and ] move it up and down the line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Label
from textual.worker import Worker

from loradeck.engine.runs.phase import SETTLED
from loradeck.tui.event_text import fmt_loss
from loradeck.tui.screens import LoradeckScreen
from loradeck.tui.widgets.footer import KeysFooter
from loradeck.tui.widgets.inline_message import InlineMessage
from loradeck.tui.widgets.nav import NavBar

REFRESH_SECONDS = 2.0
COLUMNS = (("run", "run"), ("phase", "phase"), ("queue", "queue"), ("step", "step"),
           ("loss", "loss"), ("eval", "eval"), ("GPUs", "gpus"), ("model", "model"))


@dataclass
class RunRow:
    """A row of the runs table, from ``Run.summary()``."""

    id: str
    phase: str
    step: str
    loss: str
    eval: str
    model: str
    alive: bool
    resumable: bool
    queue: str = "-"  # "#2 waiting", or the entry's state; "-": not queued
    gpus: str = "-"
    waiting: int | None = None  # place among the waiting entries (1: next)

    def cells(self) -> tuple[str, ...]:
        return (self.id, self.phase, self.queue, self.step, self.loss, self.eval, self.gpus,
                self.model)


class _SummaryCache:
    """Run summaries, re-read only when a run's events or state file changed."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple, dict[str, Any]]] = {}

    def summary(self, run: Any) -> dict[str, Any]:
        stamp = []
        for p in (run.events_path, run.state_path):
            try:
                st = p.stat()
                stamp.append((st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                stamp.append(None)
        key = tuple(stamp)
        hit = self._cache.get(run.id)
        if hit is not None and hit[0] == key:
            summary = dict(hit[1])
            summary["alive"] = run.alive()  # liveness can change without a file changing
            if not summary["alive"] and summary["phase"] not in SETTLED:
                summary = run.summary()
            return summary
        summary = run.summary()
        self._cache[run.id] = (key, summary)
        return summary


def row_of(summary: dict[str, Any], entry: Any = None, waiting: int | None = None) -> RunRow:
    phase = summary.get("phase") or "?"
    if summary.get("alive") and phase not in ("stopping",):
        phase = f"{phase} ●"
    max_steps = summary.get("max_steps")
    step = f"{summary.get('step') or 0}/{max_steps}" if max_steps else str(summary.get("step") or 0)
    resumable = not summary.get("alive") and summary.get("phase") in ("stopped", "failed")
    queue = "-" if entry is None else (f"#{waiting} waiting" if waiting else str(entry.state))
    gpus = summary.get("gpus") or (entry.gpus if entry is not None else None)
    return RunRow(id=summary["id"], phase=phase, step=step, loss=fmt_loss(summary.get("loss")),
                  eval=fmt_loss(summary.get("eval_loss")), model=str(summary.get("model") or "-"),
                  alive=bool(summary.get("alive")), resumable=resumable, queue=queue,
                  gpus=",".join(gpus) if gpus else "-", waiting=waiting)


class RunsTable(DataTable):
    """The runs table; enter opens the highlighted run (shown in the footer)."""

    BINDINGS = [Binding("enter", "select_cursor", "Open", id="runs.open",
                        tooltip="Open the selected run's training view")]


class RunsScreen(LoradeckScreen):
    """All runs, newest last; refreshed every few seconds."""

    class Collected(Message, bubble=False):
        """The rows of a refresh, read in a worker thread."""

        def __init__(self, rows: list[RunRow]) -> None:
            super().__init__()
            self.rows = rows

    class ActionDone(Message, bubble=False):
        """A stop, resume or queue change was carried out: ``text`` says what was done."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    MODE = "runs"
    TITLE = "Runs"
    BINDINGS = [
        Binding("o", "open", "Open", id="runs.open_key", show=False,
                tooltip="Open the selected run's training view"),
        Binding("x", "stop", "Stop", id="runs.stop", tooltip="Stop the selected run"),
        Binding("u", "resume", "Resume", id="runs.resume",
                tooltip="Resume the selected run from its newest checkpoint"),
        Binding("space", "mark", "Mark", id="runs.mark",
                tooltip="Mark the selected run to compare (space again: unmark)"),
        Binding("v", "compare", "Compare", id="runs.compare",
                tooltip="Compare the marked runs: loss curves, config, figures"),
        Binding("a", "queue_draft", "Queue draft", id="runs.queue_draft",
                tooltip="Add the draft (the Model, Data and LoRA screens' config) to the queue"),
        Binding("delete", "cancel", "Cancel", id="runs.cancel",
                tooltip="Take the selected waiting run out of the queue"),
        Binding("left_square_bracket", "move(-1)", "Up", id="runs.move_up",
                tooltip="Move the selected waiting run up the queue"),
        Binding("right_square_bracket", "move(1)", "Down", id="runs.move_down",
                tooltip="Move the selected waiting run down the queue"),
        Binding("f5", "refresh", "Refresh", id="runs.refresh", show=False),
    ]
    DEFAULT_CSS = """
    RunsScreen #runs-title { padding: 0 1; text-style: bold; }
    RunsScreen #runs-table { height: 1fr; }
    RunsScreen #runs-empty { padding: 1 2; color: $text-muted; }
    """

    def __init__(self, *, name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self.rows: dict[str, RunRow] = {}
        self.marked: list[str] = []
        self.loaded = False
        self._cache = _SummaryCache()
        self._refreshing = False
        self._queueing = False

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        with Vertical():
            yield Label("Runs", id="runs-title")
            yield InlineMessage(id="runs-message")
            yield Label("", id="runs-empty", markup=False)
            yield RunsTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield KeysFooter()

    def on_mount(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        for label, key in COLUMNS:
            table.add_column(label, key=key)
        self.set_interval(REFRESH_SECONDS, self.action_refresh, name="runs-refresh")
        self.action_refresh()

    def on_screen_resume(self) -> None:
        self.action_refresh()

    # refresh ---------------------------------------------------------------------------------
    def action_refresh(self) -> None:
        if self._refreshing:
            return
        self._refreshing = True
        self._collect()

    @work(thread=True, exclusive=True, group="runs-collect", exit_on_error=False,
          description="reading the runs")
    def _collect(self) -> None:
        """In a thread: one row per run, posted as ``Collected``."""
        from loradeck.engine.queue.store import read_entries, waiting_positions
        from loradeck.engine.runs.store import RunStore

        entries = read_entries()
        queued = {e.run_id: e for e in entries}
        places = waiting_positions(entries)
        rows = []
        for run in RunStore().list():
            try:
                rows.append(row_of(self._cache.summary(run), queued.get(run.id),
                                   places.get(run.id)))
            except Exception as exc:  # one unreadable run does not hide the others
                rows.append(RunRow(run.id, f"unreadable: {type(exc).__name__}", "-", "-", "-",
                                   "-", False, False))
        self.post_message(self.Collected(rows))

    @on(Collected)
    def _collected(self, message: Collected) -> None:
        self._refreshing = False
        self._show_rows(message.rows)

    def _show_rows(self, rows: list[RunRow]) -> None:
        table = self.query_one("#runs-table", DataTable)
        new = {r.id: r for r in rows}
        for key in [k for k in self.rows if k not in new]:
            table.remove_row(key)
        for row in rows:
            old = self.rows.get(row.id)
            cells = self._cells(row)
            if old is None:
                table.add_row(*cells, key=row.id)
            elif old != row:
                for (_, col), value in zip(COLUMNS, cells, strict=True):
                    table.update_cell(row.id, col, value, update_width=True)
        self.rows = new
        self.marked = [m for m in self.marked if m in new]
        self.loaded = True
        empty = self.query_one("#runs-empty", Label)
        empty.update("" if rows else "No runs yet: start one on the Train screen (t, then s).")
        empty.display = not rows
        self.refresh_bindings()

    @on(ActionDone)
    def _action_done(self, message: ActionDone) -> None:
        self._queueing = False
        self.query_one("#runs-message", InlineMessage).show_info(message.text)
        self.action_refresh()

    def show_worker_error(self, worker: Worker, error: BaseException) -> None:
        """A refresh, stop or resume failed: say so in place."""
        if worker.group == "runs-collect":
            self._refreshing = False
        if worker.group == "runs-queue":
            self._queueing = False
            self.refresh_bindings()
        self.query_one("#runs-message", InlineMessage).show_error(error)

    def _cells(self, row: RunRow) -> tuple[str, ...]:
        first, *rest = row.cells()
        return (("✓ " if row.id in self.marked else "  ") + first, *rest)

    # selection and actions -------------------------------------------------------------------
    def selected(self) -> RunRow | None:
        table = self.query_one("#runs-table", DataTable)
        if not self.rows or table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:
            return None
        return self.rows.get(str(key))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "compare":
            return True if len(self.marked) >= 2 else None
        if action in ("open", "stop", "resume", "mark", "cancel", "move"):
            row = self.selected()
            if row is None:
                return None
            if action == "stop":
                return True if row.alive else None
            if action == "resume":
                return True if row.resumable else None
            if action == "cancel":
                return True if row.waiting else None
            if action == "move":
                last = max((r.waiting or 0 for r in self.rows.values()), default=0)
                step = int(parameters[0]) if parameters else 0
                return True if row.waiting and 1 <= row.waiting + step <= last else None
        if action == "queue_draft":
            return None if self._queueing else True
        return True

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self.refresh_bindings()

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        row = self.selected()
        if row is None:
            return
        self.lapp.open_run(row.id)

    def action_mark(self) -> None:
        row = self.selected()
        if row is None:
            return
        if row.id in self.marked:
            self.marked.remove(row.id)
        else:
            self.marked.append(row.id)
        table = self.query_one("#runs-table", DataTable)
        table.update_cell(row.id, "run", self._cells(row)[0], update_width=True)
        self.refresh_bindings()

    def action_compare(self) -> None:
        from loradeck.tui.screens.compare import CompareScreen

        if len(self.marked) >= 2:
            self.app.push_screen(CompareScreen(self.marked))

    def action_stop(self) -> None:
        row = self.selected()
        if row is not None:
            self._stop(row.id)

    def action_resume(self) -> None:
        row = self.selected()
        if row is None:
            return
        from loradeck.engine.runs.store import RunStore
        from loradeck.tui.screens.confirm import confirm_remote_code

        config = RunStore().resolve(row.id).config()
        confirm_remote_code(self.app, config, lambda trusted: self._resume(row.id, trusted))

    def action_queue_draft(self) -> None:
        from loradeck.tui.screens.confirm import confirm_remote_code

        draft = self.draft
        confirm_remote_code(self.app, draft, lambda trusted: self._begin_queue(draft, trusted))

    def _begin_queue(self, draft: Any, trusted: bool) -> None:
        self._queueing = True
        self.refresh_bindings()
        self.query_one("#runs-message", InlineMessage).show_info(
            "checking the draft, then adding it to the queue…")
        self._queue(draft, trusted)

    @work(thread=True, exclusive=True, group="runs-queue", exit_on_error=False,
          description="adding the draft to the queue")
    def _queue(self, draft: Any, trusted: bool) -> None:
        self.post_message(self.ActionDone(queue_draft(draft, trusted)))

    def action_cancel(self) -> None:
        row = self.selected()
        if row is not None and row.waiting:
            self._queue_change(row.id, None)

    def action_move(self, step: int) -> None:
        row = self.selected()
        if row is not None and row.waiting:
            self._queue_change(row.id, row.waiting + step)

    @work(thread=True, exclusive=True, group="runs-action", exit_on_error=False,
          description="changing the queue")
    def _queue_change(self, run_id: str, position: int | None) -> None:
        from loradeck.engine.queue.store import QueueStore

        store = QueueStore()
        if position is None:
            store.cancel(run_id)
            self.post_message(self.ActionDone(f"{run_id}: taken out of the queue"))
        else:
            store.move(run_id, position)
            self.post_message(self.ActionDone(f"{run_id}: now #{position} in the queue"))

    @work(thread=True, exclusive=True, group="runs-action", exit_on_error=False,
          description="asking a run to stop")
    def _stop(self, run_id: str) -> None:
        from loradeck.engine.runs.store import RunStore
        from loradeck.engine.train import launch

        launch.stop(RunStore().resolve(run_id), wait=False)
        self.post_message(self.ActionDone(f"asked {run_id} to save a checkpoint and stop"))

    @work(thread=True, exclusive=True, group="runs-action", exit_on_error=False,
          description="resuming a run")
    def _resume(self, run_id: str, trusted: bool = False) -> None:
        from loradeck.engine.runs.store import RunStore
        from loradeck.engine.train import launch

        run = launch.resume(RunStore().resolve(run_id), trust_remote_code=trusted)
        self.post_message(self.ActionDone(f"resumed {getattr(run, 'id', run_id)}"))



def queue_draft(draft: Any, trusted: bool = False) -> str:
    """Check the draft and add it to the queue (in a worker thread); says what was done."""
    from loradeck.engine.queue.enqueue import enqueue
    from loradeck.engine.queue.store import read_entries, waiting_positions

    queued = enqueue([draft], trust_remote_code=trusted)
    run = queued.runs[0]
    place = waiting_positions(read_entries()).get(run.id)
    where = f"#{place} in the queue" if place else "in the queue"
    return f"queued {run.id} ({where})" + (
        "; the queue is stopped: loradeck queue start runs it" if queued.stopped else "")
