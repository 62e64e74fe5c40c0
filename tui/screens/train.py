"""The Train screen: start, stop and resume a run; its live log, loss chart, loss table and
progress, all rebuilt from the run's events.jsonl (polled), never from memory of the UI."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Label, Log
from textual.worker import Worker

from loradeck.tui.run_view import RunView, TableRow, ViewDelta
from loradeck.tui.screens import LoradeckScreen
from loradeck.tui.screens.confirm import confirm_remote_code
from loradeck.tui.widgets.follow_log import FollowLog
from loradeck.tui.widgets.footer import KeysFooter
from loradeck.tui.widgets.inline_message import InlineMessage
from loradeck.tui.widgets.loss_chart import LossChart
from loradeck.tui.widgets.loss_table import LossTable
from loradeck.tui.widgets.method_panel import MethodPanel
from loradeck.tui.widgets.nav import NavBar
from loradeck.tui.widgets.run_progress import RunProgress
from loradeck.tui.widgets.samples_panel import SamplesPanel
from loradeck.tui.widgets.system_panel import SystemPanel

POLL_SECONDS = 0.5
TABLE_EVERY = 1.0
LOG_LINES = 2000


def read_once(tail: Any, run: Any) -> tuple[list[dict[str, Any]], bool]:
    """New events of the run and whether its job is alive (the work a poll does off the UI
    thread; the events are folded on it). Alive is read first: a job found ended has written
    its last line, so a run that just finished never reads as killed between two polls."""
    alive = run.alive()
    return tail.poll(), alive


@dataclass
class Pending:
    """What the polls brought while the screen was hidden, folded into one change: drawn
    after the screen is shown again (a hidden screen does no layout or drawing work for a
    run's events)."""

    lines: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    rows: dict[int, TableRow] = field(default_factory=dict)
    losses_changed: bool = False
    progress_changed: bool = False
    phase_changed: bool = False
    system_changed: bool = False
    samples_changed: bool = False
    alive_changed: bool = False
    first: bool = False
    polls: int = 0

    def add(self, delta: ViewDelta, alive_changed: bool, first: bool) -> None:
        self.polls += 1
        self.lines.extend(delta.new_lines)
        for row in delta.rows:
            self.rows[row.step] = row
        self.losses_changed |= delta.losses_changed
        self.progress_changed |= delta.progress_changed
        self.phase_changed |= delta.phase_changed
        self.system_changed |= delta.system_changed
        self.samples_changed |= delta.samples_changed
        self.alive_changed |= alive_changed
        self.first |= first

    def delta(self) -> ViewDelta:
        return ViewDelta(new_lines=list(self.lines), rows=[self.rows[s] for s in sorted(self.rows)],
                         losses_changed=self.losses_changed,
                         progress_changed=self.progress_changed,
                         phase_changed=self.phase_changed,
                         system_changed=self.system_changed,
                         samples_changed=self.samples_changed, events=self.polls)


class TrainScreen(LoradeckScreen):
    """A training run: keys s (start), x (stop), u (resume)."""

    MODE = "train"
    TITLE = "Train"
    BINDINGS = [
        Binding("s", "start", "Start", id="train.start",
                tooltip="Start a training run with the current config"),
        Binding("a", "queue", "Queue", id="train.queue",
                tooltip="Add the current config to the queue: it starts when a slot is free"),
        Binding("x", "stop", "Stop", id="train.stop",
                tooltip="Save a checkpoint, then stop the run"),
        Binding("u", "resume", "Resume", id="train.resume",
                tooltip="Continue the run from its newest complete checkpoint"),
    ]
    class Polled(Message, bubble=False):
        """One poll of the run's events file, made in a worker thread, for ``view``."""

        def __init__(self, view: RunView, events: list[dict[str, Any]], alive: bool,
                     gpus: list[str] | None = None) -> None:
            super().__init__()
            self.view = view
            self.events = events
            self.alive = alive
            self.gpus = gpus

    class PollFailed(Message, bubble=False):
        """A poll for ``view`` could not read the run's files."""

        def __init__(self, view: RunView, error: Exception) -> None:
            super().__init__()
            self.view = view
            self.error = error

    class Progressed(Message, bubble=False):
        """A line of the work before a launch (a GGUF model's conversion)."""

        def __init__(self, line: str) -> None:
            super().__init__()
            self.line = line

    class QueueAdded(Message, bubble=False):
        """The draft was added to the queue: ``text`` says as what."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class JobChanged(Message, bubble=False):
        """A start, stop or resume was carried out; ``run`` is the run it acted on."""

        def __init__(self, run: Any, launched: bool) -> None:
            super().__init__()
            self.run = run
            self.launched = launched

    DEFAULT_CSS = """
    TrainScreen #train-title { width: 1fr; text-style: bold; padding: 0 1; }
    TrainScreen #train-status { width: 1fr; padding: 0 1; color: $text-muted; }
    TrainScreen #train-status.-failed { color: $text-error; }
    TrainScreen #train-status.-done { color: $text-success; }
    TrainScreen RunProgress { padding: 0 1; }
    TrainScreen #train-middle { height: 10; }
    TrainScreen LossChart { width: 1fr; padding: 0 1; }
    TrainScreen #loss-table { width: 48; height: 10; }
    TrainScreen #train-log { height: 1fr; min-height: 4; border-top: solid $panel; }
    """

    def __init__(self, *, name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self.run_id: str | None = None
        self.run_obj: Any = None
        self.gpus: list[str] | None = None  # the run's GPUs (the queue's), from its state
        self.view: RunView | None = None
        self.alive = False
        self.loaded = False
        self.busy: str | None = None
        self._tail: Any = None
        self._polling = False
        self.pending: Pending | None = None
        """Poll results not drawn yet because the screen is hidden (None: nothing waits)."""
        self._parts_waiting = 0
        self._rows_waiting: dict[int, TableRow] = {}
        self._table_timer: Timer | None = None
        self._table_drawn_at = 0.0

    @property
    def drawn(self) -> bool:
        """Is all that was read of the run's events on screen (none waits for a frame)?"""
        return (self.loaded and self.pending is None and not self._parts_waiting
                and not self._rows_waiting)

    # layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        with Vertical(id="train"):
            yield Label("No run yet", id="train-title", markup=False)
            yield Label("", id="train-status", markup=False)
            yield InlineMessage(id="train-message")
            yield RunProgress()
            yield SystemPanel()
            yield MethodPanel()
            yield SamplesPanel()
            with Horizontal(id="train-middle"):
                yield LossChart()
                yield LossTable(id="loss-table", cursor_type="none", zebra_stripes=True)
            yield FollowLog(max_lines=LOG_LINES, id="train-log")
        yield KeysFooter()

    def on_mount(self) -> None:
        table = self.query_one("#loss-table", LossTable)
        table.add_column("step", key="step", width=6)
        table.add_column("train loss", key="loss", width=10)
        table.add_column("eval loss", key="eval_loss", width=10)
        table.add_column("lr", key="lr", width=9)
        self.set_interval(POLL_SECONDS, self._tick, name="train-poll")
        self.watch(self.lapp, "draft", self._draft_changed, init=False)
        self.watch(self.lapp, "current_run_id", self._current_run_changed, init=True)

    # which run -------------------------------------------------------------------------------
    def _current_run_changed(self, run_id: str | None) -> None:
        self.show_run(run_id)

    def _draft_changed(self, _draft: Any) -> None:
        if self.run_id is None:
            self._show_empty()  # the hint names what s would start

    def show_run(self, run_id: str | None) -> None:
        """Show ``run_id`` (``None``: no run): the view is rebuilt from its events file."""
        if run_id == self.run_id and self.view is not None:
            return
        self.run_id = run_id
        self.run_obj = None
        self.gpus = None
        self.view = None
        self._tail = None
        self.alive = False
        self.loaded = False
        self.pending = None
        self._rows_waiting = {}
        self._table_drawn_at = 0.0
        if self._table_timer is not None:
            self._table_timer.stop()
            self._table_timer = None
        self.query_one("#train-log", Log).clear()
        self.query_one("#loss-table", LossTable).clear()
        self.query_one(LossChart).update_series([], [])
        self.query_one(RunProgress).show(None)
        self.query_one(SystemPanel).show(None)
        self.query_one(MethodPanel).show(None)
        self.query_one(SamplesPanel).show(None)
        self.query_one("#train-message", InlineMessage).clear()
        if run_id is None:
            self._show_empty()
            return
        from loradeck.engine.runs.events import EventTail
        from loradeck.engine.runs.store import RunStore

        try:
            self.run_obj = RunStore().resolve(run_id)
        except Exception as exc:  # a run removed meanwhile: say so in place
            self._show_error(exc)
            self.refresh_bindings()
            return
        self.view = RunView(max_log_lines=LOG_LINES)
        self._tail = EventTail(self.run_obj.events_path)
        self.query_one("#train-title", Label).update(self._title())
        self.query_one("#train-status", Label).update("reading the run's events…")
        self._tick()
        self.refresh_bindings()

    def _title(self) -> str:
        state = self.run_obj.state() if self.run_obj is not None else {}
        model, data = state.get("model"), state.get("dataset")
        what = f" · {model} on {data}" if model and data else ""
        if self.gpus:
            what += f" · GPUs {','.join(self.gpus)}"
        return f"Run {self.run_id}{what}"

    def _show_empty(self) -> None:
        draft = self.draft
        self.query_one("#train-title", Label).update("No run yet")
        t = draft.training
        steps = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epochs"
        hint = (f"Press s to start a run now, or a to add it to the queue: "
                f"{draft.model.name} on {draft.dataset.path}, {steps}, LoRA r={draft.lora.r}.")
        self.query_one("#train-status", Label).update(hint)
        self.refresh_bindings()

    # polling ---------------------------------------------------------------------------------
    def _tick(self) -> None:
        if self._polling or self.view is None or self._tail is None:
            return
        self._polling = True
        self._poll(self.view, self._tail, self.run_obj)

    @work(thread=True, exclusive=True, group="train-poll", exit_on_error=False,
          description="reading the run's events")
    def _poll(self, view: RunView, tail: Any, run: Any) -> None:
        """In a thread: read new events and check the job is alive; the handler folds them."""
        try:
            events, alive = read_once(tail, run)
            # the queue's choice, set when its job starts and kept after: read until seen
            gpus = self.gpus if self.gpus else run.state().get("gpus")
        except Exception as exc:  # an unreadable file: shown, never a crash
            self.post_message(self.PollFailed(view, exc))
            return
        gpus = [str(g) for g in gpus] if isinstance(gpus, list) else None
        self.post_message(self.Polled(view, events, alive, gpus))

    @on(PollFailed)
    def _poll_failed(self, message: PollFailed) -> None:
        self._polling = False
        if message.view is self.view:
            self._show_error(message.error)

    @on(Polled)
    def _apply(self, message: Polled) -> None:
        self._polling = False
        if message.view is not self.view:
            return  # a poll of the run shown before
        delta = self.view.feed(message.events)  # the fold, on the UI thread
        if message.gpus != self.gpus:
            self.gpus = message.gpus
            self.query_one("#train-title", Label).update(self._title())
            delta.system_changed = True
        alive_changed = message.alive != self.alive
        self.alive = message.alive
        first = not self.loaded
        self.loaded = True
        # hidden, shown with the backlog not drawn yet, or the last poll's parts still being
        # drawn: kept, drawn when (and with) the rest
        if not self.is_current or self.pending is not None or self._parts_waiting:
            self._keep(delta, alive_changed, first)
        else:
            self._draw(delta, alive_changed, first)

    def _keep(self, delta: ViewDelta, alive_changed: bool, first: bool) -> None:
        if self.pending is None:
            self.pending = Pending()
        self.pending.add(delta, alive_changed, first)

    def on_screen_resume(self) -> None:
        """Shown again: the switch draws the screen as it was hidden; what the polls brought
        meanwhile follows in the frames after that one."""
        self.call_after_refresh(self._draw_pending)

    def _draw_pending(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None and self.view is not None:
            self._draw(pending.delta(), pending.alive_changed, pending.first)

    def _draw(self, delta: ViewDelta, alive_changed: bool, first: bool) -> None:
        """Draw one poll's (or several polls') changes: one widget per frame (the log, the
        table, the chart, the progress), so no frame holds a key up for all of them."""
        view = self.view
        assert view is not None
        parts: list[Callable[[], object]] = []
        if delta.new_lines:
            log = self.query_one("#train-log", Log)
            parts.append(lambda: log.write_lines(delta.new_lines))
        if delta.rows:
            parts.append(lambda: self._queue_rows(delta.rows))
        if delta.losses_changed:
            chart = self.query_one(LossChart)
            parts.append(lambda: chart.update_series(view.train_series(), view.eval_series()))
            if view.figures:
                parts.append(lambda: self.query_one(MethodPanel).show(view))
        if delta.progress_changed or delta.phase_changed or first or alive_changed:
            parts.append(lambda: self.query_one(RunProgress).show(view, self.alive))
        if delta.samples_changed or first:
            parts.append(lambda: self.query_one(SamplesPanel).show(view))
        if delta.system_changed or first:
            parts.append(lambda: self.query_one(SystemPanel).show(view, self.gpus))
        if delta.phase_changed or alive_changed or first:
            parts.append(self._update_status)
            parts.append(self.refresh_bindings)
        self._draw_in_frames(view, parts)

    def _draw_in_frames(self, view: RunView, parts: list[Callable[[], object]]) -> None:
        """Run ``parts`` in order, each after the frame that shows the one before (dropped
        if the screen turned to another run's ``view`` meanwhile)."""
        self._parts_waiting = 0
        if parts and view is self.view:
            first, *rest = parts
            first()
            if rest:
                self._parts_waiting = len(rest)
                self.lapp.after_next_frame(self, partial(self._draw_in_frames, view, rest))
            elif self.pending is not None and self.is_current:
                self.lapp.after_next_frame(self, self._draw_pending)  # polls kept meanwhile

    def _queue_rows(self, rows: list[TableRow]) -> None:
        """New or changed loss-table rows: drawn at most every TABLE_EVERY seconds (a table
        update draws every visible cell again: the costliest frame of the screen)."""
        for row in rows:
            self._rows_waiting[row.step] = row
        if self._table_timer is None:
            wait = max(0.01, self._table_drawn_at + TABLE_EVERY - time.monotonic())
            self._table_timer = self.set_timer(wait, partial(self._draw_rows, self.view))

    def _draw_rows(self, view: RunView | None) -> None:
        self._table_timer = None
        rows, self._rows_waiting = self._rows_waiting, {}
        if view is not self.view or not rows:
            return
        self._table_drawn_at = time.monotonic()
        self._update_table([rows[step] for step in sorted(rows)])

    def _update_table(self, rows: list[TableRow]) -> None:
        table = self.query_one("#loss-table", LossTable)
        at_end = table.scroll_y >= table.max_scroll_y
        out_of_order = False
        last = max((int(k.value) for k in table.rows), default=-1)
        for row in rows:
            key = str(row.step)
            cells = row.cells()
            if key in table.rows:
                for col, value in zip(("step", "loss", "eval_loss", "lr"), cells, strict=True):
                    table.update_cell(key, col, value)
            else:
                out_of_order |= row.step < last
                last = max(last, row.step)
                table.add_row(*cells, key=key)
        if out_of_order:
            table.sort("step", key=lambda step: int(step))
        if at_end:
            table.call_after_refresh(table.scroll_end, animate=False)

    def _update_status(self) -> None:
        view = self.view
        if view is None:
            return
        label = self.query_one("#train-status", Label)
        phase = view.display_phase(self.alive)
        label.update(view.status_text(self.alive))
        label.set_class(phase in ("failed", "interrupted"), "-failed")
        label.set_class(phase == "done", "-done")

    # actions ---------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "start":
            return None if self.busy or self.alive else True
        if action == "queue":
            return None if self.busy else True
        if action == "stop":
            ok = not self.busy and self.view is not None and self.view.can_stop(self.alive)
            return True if ok else None
        if action == "resume":
            ok = (not self.busy and self.view is not None and self.loaded
                  and self.view.can_resume(self.alive))
            return True if ok else None
        return True

    def action_start(self) -> None:
        draft = self.draft
        confirm_remote_code(self.app, draft, lambda trusted: self._launch_start(draft, trusted))

    def action_queue(self) -> None:
        draft = self.draft
        confirm_remote_code(self.app, draft, lambda trusted: self._launch_queue(draft, trusted))

    def _launch_queue(self, draft: Any, trusted: bool) -> None:
        self._begin("queueing", "checking the draft, then adding it to the queue…")
        self._queue_job(draft, trusted)

    def _launch_start(self, draft: Any, trusted: bool) -> None:
        self._begin("starting", "starting a run…")
        self._start_job(draft, trusted)

    def action_stop(self) -> None:
        run = self.run_obj
        if run is None:
            return
        self._begin("stopping", "asking the run to save a checkpoint and stop…")
        self._stop_job(run)

    def action_resume(self) -> None:
        run = self.run_obj
        if run is None:
            return
        confirm_remote_code(self.app, run.config(),
                            lambda trusted: self._launch_resume(run, trusted))

    def _launch_resume(self, run: Any, trusted: bool) -> None:
        self._begin("resuming", "resuming from the newest complete checkpoint…")
        self._resume_job(run, trusted)

    def _begin(self, busy: str, text: str) -> None:
        self.busy = busy
        self.query_one("#train-message", InlineMessage).show_info(text)
        self.refresh_bindings()

    @work(thread=True, exclusive=True, group="train-action", exit_on_error=False,
          description="starting a run")
    def _start_job(self, config: Any, trusted: bool = False) -> None:
        from loradeck.engine.train import launch

        run = launch.start(config, trust_remote_code=trusted,
                           progress=lambda line: self.post_message(self.Progressed(line)))
        self.post_message(self.JobChanged(run, True))

    @work(thread=True, exclusive=True, group="train-action", exit_on_error=False,
          description="adding the draft to the queue")
    def _queue_job(self, config: Any, trusted: bool = False) -> None:
        from loradeck.tui.screens.runs import queue_draft

        self.post_message(self.QueueAdded(queue_draft(config, trusted)))

    @work(thread=True, exclusive=True, group="train-action", exit_on_error=False,
          description="asking the run to stop")
    def _stop_job(self, run: Any) -> None:
        from loradeck.engine.train import launch

        launch.stop(run, wait=False)
        self.post_message(self.JobChanged(run, False))

    @work(thread=True, exclusive=True, group="train-action", exit_on_error=False,
          description="resuming a run")
    def _resume_job(self, run: Any, trusted: bool = False) -> None:
        from loradeck.engine.train import launch

        self.post_message(self.JobChanged(launch.resume(run, trust_remote_code=trusted), True))

    @on(Progressed)
    def _progressed(self, message: Progressed) -> None:
        if self.busy:
            self.query_one("#train-message", InlineMessage).show_info(message.line)

    @on(QueueAdded)
    def _queued(self, message: QueueAdded) -> None:
        self.busy = None
        self.query_one("#train-message", InlineMessage).show_info(
            f"{message.text}; r shows the queue")
        self.refresh_bindings()

    @on(JobChanged)
    def _job_changed(self, message: JobChanged) -> None:
        self.busy = None
        self.query_one("#train-message", InlineMessage).clear()
        run = message.run
        if message.launched and run is not None:
            self.lapp.current_run_id = run.id
            if self.run_id != run.id:
                self.show_run(run.id)
            self.alive = True  # until the next poll says otherwise
        self.refresh_bindings()

    def show_worker_error(self, worker: Worker, error: BaseException) -> None:
        """A start, stop or resume failed: say so in place (the app routes failures here)."""
        self.busy = None
        self._show_error(error)
        self.refresh_bindings()

    def _show_error(self, exc: BaseException) -> None:
        self.query_one("#train-message", InlineMessage).show_error(exc)
