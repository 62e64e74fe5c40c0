"""The Eval screen: pick what to compare (the base, the adapter, the checkpoints, the GGUF
files exported) and how many rows, start the evaluation as a job of its own (it goes on when
the app closes), watch its progress, then read a table of scores per model, the best of each
column marked, and each row's prompt, reference and answers side by side.

The job is ``python -m loradeck.engine.evals.job``; this screen follows the run's events and
reads the newest RUN/eval/<time>.json.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import ContentSwitcher, DataTable, Label, ProgressBar, SelectionList, Static
from textual.widgets.selection_list import Selection

from loradeck.engine.evals.report import HEADERS, best_in_columns, cell, shown_columns
from loradeck.tui.screens import LoradeckScreen
from loradeck.tui.widgets.footer import KeysFooter
from loradeck.tui.widgets.help_line import HelpLine
from loradeck.tui.widgets.inline_message import InlineMessage
from loradeck.tui.widgets.line_input import LineInput
from loradeck.tui.widgets.nav import NavBar

POLL_SECONDS = 0.5
DEFAULT_MAX_NEW_TOKENS = 64


def choices(summary: dict[str, Any], checkpoints: int, ggufs: list[str]) -> list[Selection]:
    """What can be compared for the run: the base always, the rest when the run has it."""
    out = [Selection("base model", "base", True)]
    if summary.get("has_adapter"):
        out.append(Selection("adapter (final)", "adapter", True))
    if checkpoints:
        out.append(Selection(f"checkpoints ({checkpoints})", "checkpoints", False))
    out += [Selection(f"GGUF {q}", f"gguf:{q}", False) for q in ggufs]
    return out


def request(selected: list[str], rows: str, max_new_tokens: str) -> dict[str, Any]:
    """The job's request from the screen's choices (ValueError with the field's name)."""
    try:
        n_rows = int(rows) if rows.strip() else None
        if n_rows is not None and n_rows < 1:
            raise ValueError
    except ValueError:
        raise ValueError("rows: a whole number above 0, or empty for all") from None
    try:
        tokens = int(max_new_tokens)
        if not 1 <= tokens <= 4096:
            raise ValueError
    except ValueError:
        raise ValueError("max new tokens: a whole number from 1 to 4096") from None
    if not selected:
        raise ValueError("choose at least one model to evaluate (space toggles)")
    return {"rows": n_rows, "max_new_tokens": tokens, "base": "base" in selected,
            "adapter": "adapter" in selected, "checkpoints": "checkpoints" in selected,
            "gguf": [s.split(":", 1)[1] for s in selected if s.startswith("gguf:")]}


def score_cells(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The scores table: its headers and, per model, its cells (the best of each column in
    bold with a star)."""
    models = result.get("models") or []
    cols = shown_columns(models)
    best = best_in_columns(models)
    best_name = (result.get("best_checkpoint") or {}).get("name")
    rows = []
    for m in models:
        name = f"{m['name']} (best)" if m["name"] == best_name else m["name"]
        cells: list[Any] = [name]
        for col in cols:
            text = cell(col, m["scores"].get(col))
            cells.append(Text(f"{text} ★", style="bold") if m["name"] in best.get(col, ())
                         else text)
        rows.append(cells)
    return ["model", *(HEADERS[c] for c in cols)], rows


class EvalScreen(LoradeckScreen):
    """Evaluate the current run: choose, start, watch, read."""

    class RunRead(Message, bubble=False):
        """The run as read in a worker: its summary, what it can compare, its last result."""

        def __init__(self, run: Any, summary: dict[str, Any], found: tuple[int, list[str]],
                     result: dict[str, Any] | None, eval_running: bool) -> None:
            super().__init__()
            self.run, self.summary, self.found = run, summary, found
            self.result, self.eval_running = result, eval_running

    class Started(Message, bubble=False):
        """The evaluation job started (its process, and where its events begin)."""

        def __init__(self, proc: Any, offset: int) -> None:
            super().__init__()
            self.proc, self.offset = proc, offset

    class Refused(Message, bubble=False):
        """The evaluation was refused before it started (one line)."""

        def __init__(self, error: BaseException) -> None:
            super().__init__()
            self.error = error

    MODE = "eval"
    TITLE = "Eval"
    BINDINGS = [
        Binding("ctrl+s", "start", "Start eval", id="eval.start",
                tooltip="Start the evaluation of the models chosen (a job: it goes on when "
                        "the app closes)"),
        Binding("v", "toggle_view", "Scores|rows", id="eval.view",
                tooltip="Show the scores per model, or each row's answers side by side"),
    ]
    DEFAULT_CSS = """
    EvalScreen #eval-title { padding: 0 1; text-style: bold; width: 1fr; }
    EvalScreen #eval-setup { height: auto; max-height: 7; }
    EvalScreen #eval-models { width: 34; height: auto; max-height: 7; border: none;
                              padding: 0 1; }
    EvalScreen #eval-options { width: 1fr; height: auto; }
    EvalScreen .eval-row { height: 1; padding: 0 1; }
    EvalScreen .eval-row > Label { width: auto; padding: 0 1 0 0; }
    EvalScreen .eval-row > LineInput { width: 12; }
    EvalScreen #eval-progress-row > ProgressBar { width: auto; margin-right: 1; }
    EvalScreen #eval-status { width: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    EvalScreen #eval-views { height: 1fr; }
    EvalScreen #eval-scores { height: 1fr; }
    EvalScreen #eval-rows-view { height: 1fr; }
    EvalScreen #eval-row-table { height: auto; max-height: 6; }
    EvalScreen #eval-row-detail { height: auto; max-height: 4; padding: 0 1;
                                  color: $text-muted; }
    EvalScreen #eval-answers { height: 1fr; }
    EvalScreen .eval-answer { width: 1fr; border: round $panel; padding: 0 1; }
    """
    AUTO_FOCUS = "#eval-models"
    running: reactive[bool] = reactive(False)

    def __init__(self, *, name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self.run_obj: Any = None
        self.summary: dict[str, Any] = {}
        self.result: dict[str, Any] | None = None
        self._tail: Any = None
        self._proc: Any = None
        self._timer: Any = None

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        with Vertical(id="eval"):
            yield Label("No run chosen", id="eval-title", markup=False)
            with Horizontal(id="eval-setup"):
                yield SelectionList[str](id="eval-models")
                with Vertical(id="eval-options"):
                    with Horizontal(classes="eval-row"):
                        yield Label("rows")
                        yield LineInput(placeholder="all", id="eval-rows", compact=True,
                                        type="integer",
                                        tooltip="Evaluate the first N held-out rows (empty: "
                                                "all of them)")
                        yield Label(" max new tokens")
                        yield LineInput(str(DEFAULT_MAX_NEW_TOKENS), id="eval-max-tokens",
                                        compact=True, type="integer", tooltip="New tokens at most in each "
                                                              "answer, the same for every model")
                    with Horizontal(classes="eval-row", id="eval-progress-row"):
                        yield ProgressBar(total=1, show_eta=False, show_percentage=False,
                                          id="eval-bar")
                        yield Label("", id="eval-status", markup=False)
                    yield InlineMessage(id="eval-message")
            with ContentSwitcher(initial="eval-scores", id="eval-views"):
                yield DataTable(id="eval-scores", cursor_type="row", zebra_stripes=True)
                with Vertical(id="eval-rows-view"):
                    yield DataTable(id="eval-row-table", cursor_type="row")
                    yield Static("", id="eval-row-detail", markup=False)
                    yield Horizontal(id="eval-answers")
        yield HelpLine("space chooses · ctrl+s starts · v scores|rows · tab moves · Esc back",
                       id="help-line")
        yield KeysFooter()

    def on_mount(self) -> None:
        self.watch(self.lapp, "current_run_id", self.show_run, init=True)

    def on_screen_resume(self) -> None:
        if self.run_obj is not None and not self.running:
            self._load(self.run_obj)

    # the run ----------------------------------------------------------------------------------
    def show_run(self, run_id: str | None) -> None:
        self.query_one("#eval-message", InlineMessage).clear()
        if run_id is None:
            self.run_obj = None
            self.query_one("#eval-title", Label).update(
                "No run chosen: open one from the Runs screen (r), or train one (t)")
            self.refresh_bindings()
            return
        from loradeck.engine.runs.store import RunStore

        try:
            self.run_obj = RunStore().resolve(run_id)
        except Exception as exc:
            self.run_obj = None
            self.query_one("#eval-message", InlineMessage).show_error(exc)
            self.refresh_bindings()
            return
        self.query_one("#eval-title", Label).update(f"Evaluate run {self.run_obj.id}")
        self._load(self.run_obj)

    @work(thread=True, exclusive=True, group="eval-read", exit_on_error=False,
          description="reading the run's evaluations")
    def _load(self, run: Any) -> None:
        from loradeck.engine.evals import report
        from loradeck.engine.publish.gguf_export import quant_of, run_files
        from loradeck.engine.runs.state import fold

        summary = run.summary()
        state = fold(run.events())
        found = (len([cp for cp in run.checkpoints()
                      if (cp / "adapter_config.json").is_file()]),
                 [quant_of(p) for p in run_files(run)])
        self.post_message(self.RunRead(run, summary, found, report.latest(run.dir),
                                      state.eval_running))

    @on(RunRead)
    def _show(self, message: RunRead) -> None:
        run, summary, found = message.run, message.summary, message.found
        result, eval_running = message.result, message.eval_running
        if run is not self.run_obj:
            return
        self.summary = summary
        models = self.query_one("#eval-models", SelectionList)
        chosen = set(models.selected)
        models.clear_options()
        for option in choices(summary, *found):
            models.add_option(Selection(option.prompt, option.value,
                                        option.value in chosen if chosen else
                                        option.initial_state))
        if result != self.result or not self.query_one("#eval-scores", DataTable).columns:
            self.show_result(result)  # drawn again only when it changed
        if eval_running and summary.get("alive") and not self.running:
            self._follow(offset=None)  # a job started earlier (by this app or another)
        self.refresh_bindings()

    # the result -------------------------------------------------------------------------------
    def show_result(self, result: dict[str, Any] | None) -> None:
        self.result = result
        table = self.query_one("#eval-scores", DataTable)
        table.clear(columns=True)
        rows_table = self.query_one("#eval-row-table", DataTable)
        rows_table.clear(columns=True)
        if not result:
            table.add_column("no evaluation yet: choose models and press ctrl+s")
            return
        headers, rows = score_cells(result)
        for h in headers:
            table.add_column(h)
        for row in rows:
            table.add_row(*row)
        rows_table.add_columns("#", "prompt", "reference")
        for i, row in enumerate(result.get("rows") or [], start=1):
            rows_table.add_row(str(i), _short(row.get("prompt")), _short(row.get("reference")))
        self._show_row(0)

    @on(DataTable.RowHighlighted, "#eval-row-table")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_row(event.cursor_row)

    def _show_row(self, index: int) -> None:
        rows = (self.result or {}).get("rows") or []
        detail = self.query_one("#eval-row-detail", Static)
        answers = self.query_one("#eval-answers", Horizontal)
        answers.remove_children()
        if not 0 <= index < len(rows):
            detail.update("")
            return
        row = rows[index]
        detail.update(f"{row.get('where')}\nprompt: {row.get('prompt')}\n"
                      f"reference: {row.get('reference') or '(none)'}")
        panes = []
        for name, answer in (row.get("answers") or {}).items():
            pane = VerticalScroll(Static(answer.get("text") or "", markup=False),
                                  classes="eval-answer")
            stop = "stopped" if answer.get("stopped") else "hit the limit"
            pane.border_title = f"{name} · {answer.get('tokens')} tokens, {stop}"
            panes.append(pane)
        answers.mount_all(panes)

    def action_toggle_view(self) -> None:
        switcher = self.query_one("#eval-views", ContentSwitcher)
        switcher.current = "eval-rows-view" if switcher.current == "eval-scores" \
            else "eval-scores"
        self.query_one("#eval-row-table" if switcher.current == "eval-rows-view"
                       else "#eval-scores").focus()

    # the job ----------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action != "start":
            return True
        if self.running or self.run_obj is None or self.summary.get("alive"):
            return None
        return True

    def watch_running(self) -> None:
        self.refresh_bindings()

    def action_start(self) -> None:
        message = self.query_one("#eval-message", InlineMessage)
        try:
            req = request(list(self.query_one("#eval-models", SelectionList).selected),
                          self.query_one("#eval-rows", LineInput).value,
                          self.query_one("#eval-max-tokens", LineInput).value)
        except ValueError as exc:
            message.show_error(str(exc))
            return
        message.clear()
        self.running = True
        self.query_one("#eval-status", Label).update("starting the evaluation…")
        self.query_one("#eval-bar", ProgressBar).update(total=None, progress=0)
        self._start(self.run_obj, req)

    @work(thread=True, exclusive=True, group="eval-start", exit_on_error=False,
          description="starting the evaluation job")
    def _start(self, run: Any, req: dict[str, Any]) -> None:
        from loradeck.engine.evals import evaluate as ev
        from loradeck.engine.evals.job import start

        offset = run.events_path.stat().st_size if run.events_path.exists() else 0
        try:
            ev.check(run, ev.EvalRequest.from_dict(req))
        except Exception as exc:
            self.post_message(self.Refused(exc))
            return
        self.post_message(self.Started(start(run, req), offset))

    @on(Started)
    def _started(self, message: Started) -> None:
        self._proc = message.proc
        self._follow(message.offset)

    @on(Refused)
    def _refused(self, message: Refused) -> None:
        self._failed(message.error)

    def _failed(self, exc: BaseException | str) -> None:
        self.running = False
        self.query_one("#eval-status", Label).update("")
        self.query_one("#eval-message", InlineMessage).show_error(exc)

    def _follow(self, offset: int | None) -> None:
        from loradeck.engine.runs.events import EventTail

        self.running = True
        self._tail = EventTail(self.run_obj.events_path)
        if offset is not None:
            self._tail.offset = offset
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_interval(POLL_SECONDS, self._poll, name="eval-poll")

    def _poll(self) -> None:
        if self._tail is None:
            return
        status = self.query_one("#eval-status", Label)
        bar = self.query_one("#eval-bar", ProgressBar)
        for ev in self._tail.poll():
            kind = ev.get("type")
            if kind == "eval" and ev.get("stage") != "done":
                bar.update(total=ev.get("total"), progress=ev.get("done", 0))
                status.update(f"{ev['stage']}: {ev.get('model')} {ev.get('done')}/"
                              f"{ev.get('total')}")
            elif kind == "log" and ev.get("stage") == "eval":
                status.update(str(ev.get("text", "")))
            elif kind == "eval":
                self._ended()
                status.update(f"done: {len(ev.get('models') or [])} models on "
                              f"{ev.get('rows')} rows")
                self._load(self.run_obj)
                return
            elif kind == "error":
                self._ended()
                self._failed(f"{ev.get('message')} ({ev.get('hint')})" if ev.get("hint")
                             else str(ev.get("message")))
                return
        if self._proc is not None and self._proc.poll() is not None and self.running:
            code = self._proc.returncode
            self._ended()
            if code:
                self._failed(f"the evaluation ended with status {code}; see the log in "
                             f"{self.run_obj.dir / 'eval'}")

    def _ended(self) -> None:
        self.running = False
        self._tail, self._proc = None, None
        if self._timer is not None:
            self._timer.stop()
            self._timer = None


def _short(text: Any, width: int = 60) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"

