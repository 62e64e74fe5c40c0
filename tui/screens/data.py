"""Data: a dataset path or Hub id, its detected shape and column mapping, the first rows, the
training text of the selected row under the chosen template, and how many rows max length cuts.

Reading runs in a thread worker (``loradeck.engine.data.files.inspect``); rendering and token counting
run in another one that loads the model's tokenizer (transformers is imported there only).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rich.cells import cell_len, set_cell_size
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Input, Label, Select, Static
from textual.worker import Worker

from loradeck.engine.config import Config
from loradeck.engine.data import files as dataset_files
from loradeck.engine.data.lengths import LengthCounts
from loradeck.engine.data.lengths import count as count_lengths
from loradeck.engine.data.shapes import SHAPE_ROLES
from loradeck.engine.enums import DatasetFormat, Template, values
from loradeck.engine.errors import LoradeckError, error_text
from loradeck.tui.screens import LoradeckScreen
from loradeck.tui.widgets import KeysFooter, NavBar
from loradeck.tui.widgets.line_input import LineInput

TABLE_ROWS = 50
CELL_WIDTH = 40
FORMATS = values(DatasetFormat)
TEMPLATES = values(Template)


@dataclass
class Rendered:
    """What the render worker found: per-row training text and the token counts."""

    key: tuple
    template: str = ""
    texts: dict[int, tuple[str, str]] = field(default_factory=dict)  # row -> (prompt, completion)
    row_errors: dict[int, str] = field(default_factory=dict)
    rows: int = 0
    usable: int = 0
    train_rows: int = 0
    eval_rows: int = 0
    lengths: LengthCounts | None = None  # kept, cut and dropped rows, as training counts them
    longest: int = 0
    max_length: int = 0


def render_dataset(config: Config, shown_rows: int = TABLE_ROWS, tokenizer: Any = None
                   ) -> Rendered:
    """Render every row with the model's tokenizer and template; count tokens (heavy)."""
    from loradeck.engine.data import templates
    from loradeck.engine.data.prep import split_indices, tokenize_batch
    from loradeck.engine.models import loading as models

    ds, tr = config.dataset, config.training
    result = Rendered(key=render_key(config), max_length=tr.max_length)
    if tokenizer is None:
        tokenizer = models.load_tokenizer(config.model)
    renderer = templates.Renderer(tokenizer, ds.template, ds.system_prompt)
    result.template = renderer.name
    table = dataset_files.read_table(ds.path, ds.split)
    rows = table.rows[: ds.max_rows] if ds.max_rows else table.rows
    shape, mapping = dataset_files.detect(table.columns, rows[0], ds.format, ds.columns,
                                          table.source)
    examples: list[str] = []
    wheres: list[str] = []
    for i, (row, where) in enumerate(zip(rows, table.wheres, strict=False)):
        try:
            example = dataset_files.normalize_row(row, shape, mapping, where)
            prompt, completion = renderer.render(example)
        except LoradeckError as exc:
            if i < shown_rows:
                result.row_errors[i] = exc.line() if exc.where else f"{where}: {exc.message}"
            continue
        if i < shown_rows:
            result.texts[i] = (prompt, completion)
        examples.append(json.dumps(example, ensure_ascii=False))
        wheres.append(where)
    result.rows = len(rows)
    result.usable = len(examples)
    kept = 0
    if examples:  # tokenized as training tokenizes, counted by the same policy
        plain = shape == "text"
        out = tokenize_batch({"example": examples, "where": wheres}, renderer=renderer,
                             max_length=tr.max_length, plain=plain)
        firsts = [k for k, first in enumerate(out["first"]) if first]
        lengths = [out["length"][k] for k in firsts]
        result.lengths, _ = count_lengths(lengths, [out["first_trained"][k] for k in firsts],
                                          tr.max_length, wheres.__getitem__, plain)
        result.longest = max(lengths)
        kept = result.lengths.kept
    train, evaluation = split_indices(kept, ds.eval_fraction, tr.seed, config.eval.max_rows)
    result.train_rows, result.eval_rows = len(train), len(evaluation)
    return result


def render_key(config: Config) -> tuple:
    """What a rendering depends on: a change in any of these renders again."""
    ds = config.dataset
    return (config.model.name, config.model.revision, ds.path, ds.split, ds.format,
            tuple(sorted(ds.columns.items())), ds.template, ds.system_prompt, ds.max_rows,
            ds.eval_fraction, config.eval.max_rows, config.training.max_length,
            config.training.seed, config.training.method)


def inspect_key(config: Config) -> tuple:
    ds = config.dataset
    return (ds.path, ds.split, ds.format, tuple(sorted(ds.columns.items())),
            config.training.method)


def column_order(ins: dataset_files.Inspection) -> list[str]:
    """The dataset's columns, those mapped to a role first (in role order)."""
    mapped = [c for c in ins.columns.values() if c in ins.found_columns]
    return mapped + [c for c in ins.found_columns if c not in mapped]


def cell_text(value: Any, width: int) -> str:
    """One table cell: a single line of at most ``width`` characters."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    if cell_len(text) <= width:
        return text
    return set_cell_size(text, width - 1).rstrip() + "…"  # Korean and CJK take two cells


def training_text(prompt: str, completion: str) -> Text:
    """The rendered row: the prompt dimmed, the completion (what is learnt) bold."""
    text = Text()
    text.append(prompt, style="dim")
    text.append(completion, style="bold")
    return text


def file_name(path: str) -> str:
    """A local file's name alone (its full path is on the Dataset line); a Hub id as it is."""
    return os.path.basename(path) if os.path.isabs(path) or os.path.exists(path) else path


ERRORS_SHOWN = 2
"""Row errors listed in full; the rest are counted."""


class DataScreen(LoradeckScreen):
    """Dataset: shape, mapping, first rows, rendered training text and length counts."""

    MODE = "data"
    AUTO_FOCUS = "#data-rows"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "edit_path", "Path", id="data.path",
                tooltip="Type a dataset file, a Hub dataset id (org/name) or demo"),
        Binding("ctrl+r", "reload", "Reload", id="data.reload",
                tooltip="Read the dataset and render it again"),
    ]
    DEFAULT_CSS = """
    DataScreen .row { height: 1; }
    DataScreen .row Label { padding: 0 1; }
    DataScreen #data-path { width: 1fr; }
    DataScreen #data-format { width: 24; }
    DataScreen #data-template { width: 14; }
    DataScreen #data-shape { padding: 0 1; height: 1; color: $text-accent;
                             text-wrap: nowrap; text-overflow: ellipsis; }
    DataScreen #data-mapping { grid-size: 4; grid-columns: 13 1fr 13 1fr; height: auto;
                               padding: 0 1; }
    DataScreen #data-mapping Label { text-align: right; padding-right: 1; width: 100%; }
    DataScreen #data-errors { padding: 0 1; color: $text-error; height: auto; max-height: 6; }
    DataScreen #data-rows { height: 1fr; min-height: 4; }
    DataScreen #data-render-box { height: 1fr; min-height: 3; border-top: solid $panel-lighten-2;
                                  padding: 0 1; }
    DataScreen #data-counts { padding: 0 1; height: 1; background: $panel;
                              text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._inspection: dataset_files.Inspection | None = None
        self._rendered: Rendered | None = None
        self._shown_inspect: tuple | None = None
        self._shown_render: tuple | None = None
        self._render_error: str | None = None
        self._tokenizers: dict[tuple, Any] = {}
        self._mapping_layout: tuple | None = None

    # ---- layout

    def compose(self) -> ComposeResult:
        ds = self.draft.dataset
        yield NavBar(self.MODE)
        with Horizontal(classes="row"):
            yield Label("Dataset")
            yield LineInput(ds.path, id="data-path", compact=True,
                            placeholder="file (.jsonl .json .csv .parquet .txt), org/name, or demo",
                            tooltip="A dataset file, a Hub dataset id (org/name) or demo; "
                                    "Enter reads it")
        with Horizontal(classes="row"):
            yield Label("Format")
            yield Select([(f, f) for f in FORMATS], value=ds.format, allow_blank=False,
                         id="data-format", compact=True,
                         tooltip="auto detects instruction, messages, prompt-completion or text")
            yield Label("Template")
            yield Select([(t, t) for t in TEMPLATES], value=ds.template, allow_blank=False,
                         id="data-template", compact=True,
                         tooltip="auto: the tokenizer's chat template; or chatml, mistral, alpaca")
        yield Static("", id="data-shape", markup=False)
        yield Grid(id="data-mapping")
        yield Static("", id="data-errors", markup=False)
        yield DataTable(id="data-rows", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="data-render-box"):
            yield Static("", id="data-rendered", markup=False)
        yield Static("", id="data-counts", markup=False)
        yield KeysFooter()

    def on_mount(self) -> None:
        self.query_one("#data-render-box").border_title = "Training text"
        self._show_errors("")

    def on_screen_resume(self) -> None:
        self.refresh_data()

    # ---- reading and rendering

    def refresh_data(self, force: bool = False) -> None:
        """Inspect and render again when what they depend on changed (or ``force``)."""
        config = self.draft
        self._sync_controls(config)
        if force or inspect_key(config) != self._shown_inspect:
            self._shown_inspect = inspect_key(config)
            self._shown_render = None
            self.query_one("#data-rows").loading = True
            self.inspect_worker(config)
        if config.training.method != "sft":  # TRL's trainers render those rows in the job
            self._shown_render = render_key(config)
            self._rendered = None
            self._render_error = None
            self.query_one("#data-counts", Static).update(
                f"{config.training.method} rows: prompts rendered with the "
                f"{config.dataset.template} template and tokenized by the training job")
            return
        if force or render_key(config) != self._shown_render:
            self._shown_render = render_key(config)
            self._rendered = None
            self._render_error = None
            self.query_one("#data-render-box").loading = True
            self.query_one("#data-counts", Static).update("counting tokens…")
            self.render_worker(config, self._tokenizers.get((config.model.name,
                                                             config.model.revision)))

    def _sync_controls(self, config: Config) -> None:
        ds = config.dataset
        path = self.query_one("#data-path", Input)
        if path.value != ds.path and self.focused is not path:
            path.value = ds.path
        for sel_id, value in (("#data-format", ds.format), ("#data-template", ds.template)):
            select = self.query_one(sel_id, Select)
            if select.value != value:
                select.value = value

    class Inspected(Message, bubble=False):
        """The dataset read for the preview (its key says which config it was read for)."""

        def __init__(self, key: tuple, inspection: dataset_files.Inspection) -> None:
            super().__init__()
            self.key, self.inspection = key, inspection

    class RenderDone(Message, bubble=False):
        """Every row rendered and counted, with the tokenizer that did it (kept for next
        time by the handler)."""

        def __init__(self, rendered: Rendered, model_key: tuple, tokenizer: Any) -> None:
            super().__init__()
            self.rendered, self.model_key, self.tokenizer = rendered, model_key, tokenizer

    @work(thread=True, exclusive=True, group="inspect", exit_on_error=False,
          description="reading the dataset")
    def inspect_worker(self, config: Config) -> None:
        ds = config.dataset
        if config.training.method != "sft":
            from loradeck.engine.data import method_rows

            result = method_rows.preview(ds, config.training.method, limit=TABLE_ROWS)
        else:
            result = dataset_files.preview(ds.path, columns=ds.columns or None,
                                           format=ds.format, limit=TABLE_ROWS, split=ds.split)
        self.report(self.Inspected(inspect_key(config), result))

    @work(thread=True, exclusive=True, group="render", exit_on_error=False,
          description="rendering the preview")
    def render_worker(self, config: Config, tokenizer: Any = None) -> None:
        if tokenizer is None:
            from loradeck.engine.models import loading as models

            tokenizer = models.load_tokenizer(config.model)
        rendered = render_dataset(config, tokenizer=tokenizer)
        self.report(self.RenderDone(rendered, (config.model.name, config.model.revision),
                                          tokenizer))

    @on(Inspected)
    async def _inspected(self, message: Inspected) -> None:
        if message.key == self._shown_inspect:
            self.query_one("#data-rows").loading = False
            await self._show_inspection(message.inspection)

    @on(RenderDone)
    def _render_done(self, message: RenderDone) -> None:
        self._tokenizers[message.model_key] = message.tokenizer
        rendered = message.rendered
        if rendered.key == self._shown_render:
            self.query_one("#data-render-box").loading = False
            self._rendered = rendered
            self._show_counts()
            self._show_selected()

    def show_worker_error(self, worker: Worker, error: BaseException) -> None:
        if worker.group == "inspect":
            self.query_one("#data-rows").loading = False
            self._show_errors(error_text(error))
        elif worker.group == "render":
            self.query_one("#data-render-box").loading = False
            self._render_error = error_text(error)
            self.query_one("#data-counts", Static).update(
                "no token counts: the rows cannot be rendered (see above)")
            self._show_selected()
        else:
            super().show_worker_error(worker, error)

    # ---- showing results

    async def _show_inspection(self, ins: dataset_files.Inspection) -> None:
        self._inspection = ins
        if ins.format:
            cols = ", ".join(f"{role}={col}" for role, col in ins.columns.items())
            source = ("demo dataset" if ins.kind == "demo"
                      else f"{ins.kind} {file_name(str(ins.file))}")
            shape = f"{ins.format} rows · {ins.total_rows} rows · {source} · {cols}"
        elif ins.found_columns:
            shape = f"shape not recognised · columns: {', '.join(ins.found_columns)}"
        else:
            shape = "no data"
        self.query_one("#data-shape", Static).update(shape)
        self._show_errors("\n".join(ins.errors[:ERRORS_SHOWN]) + (
            f"\n… and {len(ins.errors) - ERRORS_SHOWN} more (select a row to see its "
            "error)" if len(ins.errors) > ERRORS_SHOWN else ""))
        await self._show_mapping(ins)
        table = self.query_one("#data-rows", DataTable)
        table.clear(columns=True)
        headers = column_order(ins)
        if headers:
            width = table.size.width or self.app.size.width
            cell = max(12, min(CELL_WIDTH, (width - 6) // len(headers) - 2))
            table.add_column("#", key="#")
            for h in headers:
                table.add_column(h, key=h)
            for i, row in enumerate(ins.rows):
                table.add_row(str(i + 1), *[cell_text(row.get(h), cell) for h in headers],
                              key=str(i))
        self._show_selected()

    def _short(self, text: str) -> str:
        """``text`` with the dataset's full path (shown on the Dataset line) as its file name."""
        path = self.draft.dataset.path or ""
        return text.replace(f"{path}:", f"{file_name(path)}:") if path else text

    def _show_errors(self, text: str) -> None:
        errors = self.query_one("#data-errors", Static)
        errors.update(error_text(self._short(text)))
        errors.display = bool(text)

    async def _show_mapping(self, ins: dataset_files.Inspection) -> None:
        """One Select per role of the shape; rebuilt only when the roles or columns change."""
        grid = self.query_one("#data-mapping", Grid)
        shape = ins.format
        if shape is None and ins.found_columns:  # not recognised: let the columns be mapped
            fmt = self.draft.dataset.format
            shape = fmt if fmt in SHAPE_ROLES else "instruction"
        roles: list[str] = []
        required: tuple[str, ...] = ()
        if shape in SHAPE_ROLES:  # a method's rows (pairs, ...) name their columns as they are
            required, optional = SHAPE_ROLES[shape]
            roles = [*required, *optional]
        layout = (tuple(roles), tuple(ins.found_columns), required)
        values = {}
        for role in roles:
            value = ins.columns.get(role) or self.draft.dataset.columns.get(role)
            values[role] = value if value in ins.found_columns else Select.NULL
        if layout == self._mapping_layout:
            for role in roles:
                select = grid.query_one(f"#map-{role}", Select)
                if select.value != values[role]:
                    select.value = values[role]
            return
        self._mapping_layout = layout
        await grid.remove_children()
        options = [(c, c) for c in ins.found_columns]
        widgets = []
        for role in roles:
            widgets.append(Label(role, classes="role"))
            widgets.append(Select(options, value=values[role], allow_blank=True,
                                  prompt="(none)" if role not in required else "(choose)",
                                  compact=True, id=f"map-{role}", classes="mapping",
                                  tooltip=f"The column holding the {role} of each row"))
        await grid.mount_all(widgets)

    def _show_counts(self) -> None:
        r = self._rendered
        if r is None:
            return
        bad = r.rows - r.usable
        parts = [f"{r.rows} rows", f"{r.train_rows} train / {r.eval_rows} eval"]
        if bad:
            parts.append(f"{bad} with errors")
        if r.lengths is not None:
            parts.append(r.lengths.line())
        parts.append(f"longest {r.longest} tokens")
        parts.append("template: the tokenizer's" if r.template == "tokenizer"
                     else f"template {r.template}")
        self.query_one("#data-counts", Static).update(" · ".join(parts))

    def _selected_row(self) -> int:
        table = self.query_one("#data-rows", DataTable)
        return table.cursor_row if table.row_count else -1

    def _show_selected(self) -> None:
        target = self.query_one("#data-rendered", Static)
        box = self.query_one("#data-render-box")
        row = self._selected_row()
        box.border_title = f"Training text of row {row + 1}" if row >= 0 else "Training text"
        if self._render_error:  # each error shown once: the file's above, else here
            error = self._short(self._render_error)
            shown = str(self.query_one("#data-errors", Static).content)
            target.update("no training text: fix the error above" if error in shown
                          else f"cannot render: {error}")
            target.set_class(True, "error")
            return
        ins = self._inspection
        if self.draft.training.method != "sft" and ins is not None and ins.format:
            from loradeck.engine.data.method_rows import readable

            target.set_class(False, "error")
            target.update(readable(ins.examples[row]) if 0 <= row < len(ins.examples) else "")
            box.border_title = f"Row {row + 1}, as {self.draft.training.method} reads it"
            return
        r = self._rendered
        if r is None or row < 0:
            target.update("" if row < 0 else "rendering…")
            return
        target.set_class(row in r.row_errors, "error")
        if row in r.row_errors:
            target.update(self._short(r.row_errors[row]))
        elif row in r.texts:
            target.update(training_text(*r.texts[row]))
            box.border_subtitle = ("the tokenizer's chat template" if r.template == "tokenizer"
                                   else f"template {r.template}")
        else:
            target.update("")

    @on(DataTable.RowHighlighted, "#data-rows")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_selected()

    # ---- editing

    def _apply(self, changes: dict[str, Any]) -> None:
        try:
            self.update_draft(changes)
        except LoradeckError as exc:
            self._show_errors(exc.message)
            return
        self.refresh_data()

    @on(Input.Submitted, "#data-path")
    def _path_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        path = event.value.strip()
        if not path:
            self._show_errors(
                "dataset.path: type a file, a Hub dataset id (org/name) or demo")
            return
        if path == self.draft.dataset.path:
            self.refresh_data(force=True)
        else:
            self._apply({"dataset.path": path, "dataset.columns": {}})
        self.query_one("#data-rows", DataTable).focus()

    @on(Select.Changed, "#data-format")
    def _format_changed(self, event: Select.Changed) -> None:
        if event.value != self.draft.dataset.format and event.value is not Select.NULL:
            self._apply({"dataset.format": event.value, "dataset.columns": {}})

    @on(Select.Changed, "#data-template")
    def _template_changed(self, event: Select.Changed) -> None:
        if event.value != self.draft.dataset.template and event.value is not Select.NULL:
            self._apply({"dataset.template": event.value})

    @on(Select.Changed, ".mapping")
    def _mapping_changed(self, event: Select.Changed) -> None:
        role = (event.select.id or "").removeprefix("map-")
        new = None if event.value is Select.NULL else str(event.value)
        shown = self._inspection.columns if self._inspection else {}
        current = shown.get(role) or self.draft.dataset.columns.get(role)
        if not role or new == current:
            return
        columns = dict(self.draft.dataset.columns)
        if self._inspection:  # keep what is shown, change one role
            columns = {**self._inspection.columns, **columns}
        if new is None:
            columns.pop(role, None)
        else:
            columns = {r: c for r, c in columns.items() if c != new}
            columns[role] = new
        self._apply({"dataset.columns": columns})

    def action_edit_path(self) -> None:
        self.query_one("#data-path", Input).focus()

    def action_reload(self) -> None:
        self.refresh_data(force=True)
