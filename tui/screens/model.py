"""Model: choose the base model from the HF cache, the demo model, or a Hub id / local path."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.table import Table
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import Worker

from loradeck.engine.errors import LoradeckError, error_text
from loradeck.engine.models import demo, from_gguf
from loradeck.engine.models import loading as models
from loradeck.engine.system import network
from loradeck.engine.units import byte_size, count
from loradeck.tui import startup_trace
from loradeck.tui.draft_file import draft_preview
from loradeck.tui.screens import LoradeckScreen
from loradeck.tui.widgets import HelpLine, KeysFooter, NavBar
from loradeck.tui.widgets.line_input import LineInput


def demo_description() -> dict[str, Any]:
    """What is known about demo:tiny, built or not (its shape is fixed in loradeck.engine.models.demo)."""
    info = models.describe(demo.DEMO_MODEL)
    if not info.get("known"):
        shape = {**demo.ARCH, "vocab_size": demo.VOCAB_SIZE}
        info = {"name": demo.DEMO_MODEL, "known": True, "architecture": "LlamaForCausalLM",
                "model_type": "llama", "parameters": models.count_parameters(shape),
                "layers": shape["num_hidden_layers"], "hidden_size": shape["hidden_size"],
                "vocab_size": shape["vocab_size"], "estimated": True}
    info["source"] = "demo: built locally in seconds, offline"
    return info


def model_row(name: str, size: str) -> Table:
    """One row of the model list at the list's width: the name (cut with … when long) and,
    at the right, its size."""
    row = Table.grid(expand=True, padding=(0, 1))
    row.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
    row.add_column(justify="right", no_wrap=True)
    row.add_row(name, size)
    return row


def check_model(name: str) -> dict[str, Any]:
    """Resolve and describe a typed model name (raises LoradeckError when it cannot be used)."""
    name = name.strip()
    if demo.is_demo(name):
        return demo_description()
    src = models.resolve_source(name, build_demo=False)
    if src.kind == "gguf" and not src.ready:
        info = from_gguf.describe_file(src.gguf_file or name)
    else:
        info = models.describe(src.ref if src.kind in ("local", "gguf") else name)
    info["name"] = name
    if src.kind == "local":
        info["source"] = f"local directory {src.ref}"
    elif src.kind == "gguf":
        info["source"] = (f"GGUF file, converted into {src.ref}" if src.ready else
                          "GGUF file: converted once into a model directory when training "
                          "starts")
    elif info.get("known"):
        info["source"] = "Hub id, found in the local cache"
    else:
        info["source"] = ("Hub id, not in the local cache: downloaded when training starts"
                          if network.hub_reachable() else "Hub id, not in the local cache, and this "
                          "machine is offline: it cannot be downloaded; copy the model here "
                          "and give its directory")
    return info


def describe_lines(info: dict[str, Any], size: str | None = None) -> str:
    """The details panel text for ``info`` from describe/check_model."""
    lines = [info.get("name", "?"), ""]
    if info.get("source"):
        lines.append(f"source        {info['source']}")
    if info.get("known"):
        lines.append(f"architecture  {info.get('architecture') or '?'}")
        if info.get("estimated"):  # demo:tiny before its tokenizer is built
            lines.append(f"parameters    ~{count(info.get('parameters'))}, at most; exact once "
                         "built")
        else:
            lines.append(f"parameters    {count(info.get('parameters'))}")
        shape = [f"{k} {info[k]}" for k in ("layers", "hidden_size", "vocab_size")
                 if info.get(k)]
        if shape:
            lines.append("shape         " + " · ".join(shape).replace("_size", ""))
    else:
        lines.append("architecture  unknown until the model's config.json is available")
    if size:
        lines.append(f"size on disk  {size}")
    return "\n".join(lines)


class ModelScreen(LoradeckScreen):
    """Cached models with size, the demo model, and a typed Hub id or local path."""

    class Scanned(Message, bubble=False):
        """The cached models, listed in a worker thread."""

        def __init__(self, models: list[dict[str, Any]]) -> None:
            super().__init__()
            self.models = models

    class Described(Message, bubble=False):
        """What ``check_model`` found for ``name``; ``chosen``: typed, so it is then chosen."""

        def __init__(self, name: str, info: dict[str, Any], *, chosen: bool) -> None:
            super().__init__()
            self.name = name
            self.info = info
            self.chosen = chosen

    MODE = "model"
    AUTO_FOCUS = "#models"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "choose", "Use model", id="model.choose",
                tooltip="Use the highlighted (or typed) model for training"),
        Binding("slash", "type_name", "Type a name", id="model.type",
                tooltip="Type a Hub id (org/name) or a local model directory"),
        Binding("ctrl+r", "rescan", "Rescan", id="model.rescan",
                tooltip="Scan the Hugging Face cache again"),
    ]
    DEFAULT_CSS = """
    ModelScreen #model-body { height: 1fr; }
    ModelScreen #models { width: 1fr; height: 1fr; min-height: 4; }
    ModelScreen #model-info-box { width: 1fr; height: 1fr; border: round $panel-lighten-2;
                                  padding: 0 1; }
    ModelScreen #model-entry { height: auto; }
    ModelScreen .title { padding: 0 1; text-style: bold; height: 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._cached: dict[str, dict[str, Any]] = {}
        self._built = False
        self.ready = False
        """True once the screen is built, shows the draft's model and has started its scan."""

    # ---- layout

    def compose(self) -> ComposeResult:
        # The first frame shows the navigation line at once; the rest is mounted right after
        # it (``_build``): the app's first frame then comes about as fast as a bare app's.
        yield NavBar(self.MODE)

    def _body(self) -> list[Widget]:
        """The screen below the navigation line (mounted after the first frame)."""
        info_box = VerticalScroll(Static("", id="model-info", markup=False),
                                  id="model-info-box", can_focus=False)
        entry = Vertical(
            LineInput(placeholder="Hub id (org/name) or local path, then Enter", id="model-input",
                      compact=True,
                      tooltip="A Hub id (org/name), a local model directory, or demo:tiny"),
            Static("", id="model-error", classes="error", markup=False),
            id="model-entry")
        return [Label("", id="model-current", classes="title"),
                Horizontal(OptionList(id="models"), info_box, id="model-body"),
                entry,
                HelpLine("↑↓ pick a model · Enter use it · / type a Hub id or path · "
                         "Esc back", id="help-line"),
                KeysFooter()]

    @property
    def built(self) -> bool:
        """Is the screen below the navigation line mounted yet?"""
        return self._built

    def on_mount(self) -> None:
        startup_trace.mark("first screen mounted")
        self.lapp.after_first_frame(self, self._build)

    async def _build(self) -> None:
        startup_trace.mark("screen body started")
        await self.mount_all(self._body())
        self._built = True
        self.query_one("#models", OptionList).border_title = "Models"
        self.query_one("#model-info-box").border_title = "Details"
        self._fill_options([])
        self._error(None)
        if self.focused is None and self.is_current:
            self.set_focus(self.query_one("#models", OptionList))  # now: the footer reads it
        self.refresh_bindings()
        startup_trace.mark("screen body mounted")
        self.call_after_refresh(self._after_first_frame)

    def _after_first_frame(self) -> None:
        """Reading the draft loads loradeck.engine.config (pydantic): done once the body is
        drawn, the draft's model shown first as draft.yaml names it (read with yaml alone)."""
        startup_trace.mark("screen body drawn")
        if self.lapp.draft_read:
            self._with_draft()
            return
        with startup_trace.part("the draft previewed (yaml)"):
            preview = draft_preview()
        name, quant = preview or (demo.DEMO_MODEL, None)
        self.query_one("#model-current", Label).update(
            f"Base model: {name}" + (f"   (quantization {quant})" if quant else ""))
        startup_trace.mark("model screen ready")
        startup_trace.dump()  # (the benchmark may stop the app as soon as it is drawn)
        self.lapp.after_next_frame(self, self._with_draft)

    def _with_draft(self) -> None:
        """The validated draft: its model shown and highlighted, the cache scanned."""
        with startup_trace.part("the draft read (config, pydantic, yaml)"):
            _ = self.draft
        self._show_current()
        startup_trace.mark("draft shown")
        startup_trace.dump()
        self.watch(self.lapp, "draft", lambda _: self._show_current(), init=False)
        options = self.query_one("#models", OptionList)
        if not self._cached and options.highlighted in (None, 0):
            self._highlight(options, self.draft.model.name)
        self.action_rescan()
        self.ready = True

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("choose", "type_name", "rescan") and not self._built:
            return None
        return True

    def _show_current(self) -> None:
        m = self.draft.model
        self.query_one("#model-current", Label).update(
            f"Base model: {m.name}   (quantization {m.quantization})")

    # ---- model list

    def _fill_options(self, cached: list[dict[str, Any]]) -> None:
        options = self.query_one("#models", OptionList)
        keep = options.highlighted_option.id if options.highlighted_option else None
        self._cached = {m["id"]: m for m in cached}
        options.clear_options()
        options.add_option(Option(model_row(demo.DEMO_MODEL, "demo"), id=demo.DEMO_MODEL))
        for m in cached:
            options.add_option(Option(model_row(m["id"], byte_size(m.get("size_bytes"))),
                                      id=m["id"]))
        if not cached:
            options.add_option(Option("(no Hub models cached yet)", disabled=True))
        self._highlight(options, keep or self._draft_model())

    def _draft_model(self) -> str | None:
        """The draft's model name once the draft is read (None before the first frame)."""
        if not self.lapp.draft_read:
            return None
        return self.draft.model.name

    @staticmethod
    def _highlight(options: OptionList, wanted: str | None) -> None:
        try:
            options.highlighted = options.get_option_index(wanted) if wanted else 0
        except Exception:
            options.highlighted = 0

    @work(thread=True, exclusive=True, group="scan", exit_on_error=False,
          description="listing the cached models")
    def scan_cache(self) -> None:
        self.report(self.Scanned(models.list_cached_models()))

    def action_rescan(self) -> None:
        self.query_one("#models", OptionList).loading = True
        self.scan_cache()

    # ---- details of the highlighted / typed model

    @on(OptionList.OptionHighlighted, "#models")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        name = event.option.id or ""
        self.describe(name)

    @work(thread=True, exclusive=True, group="describe", exit_on_error=False,
          description="describing the highlighted model")
    def describe(self, name: str) -> None:
        self.report(self.Described(name, check_model(name), chosen=False))

    @on(OptionList.OptionSelected, "#models")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.choose(event.option.id)

    def action_choose(self) -> None:
        options = self.query_one("#models", OptionList)
        typed = self.query_one("#model-input", Input)
        if self.focused is typed:
            self.check(typed.value)
        elif options.highlighted_option is not None and options.highlighted_option.id:
            self.choose(options.highlighted_option.id)

    def action_type_name(self) -> None:
        self.query_one("#model-input", Input).focus()

    @on(Input.Submitted, "#model-input")
    def _typed(self, event: Input.Submitted) -> None:
        event.stop()
        self.check(event.value)

    def check(self, name: str) -> None:
        """Check a typed name in a worker; chosen when it resolves."""
        if not name.strip():
            self._error("type a Hub id (org/name), a local model directory, or demo:tiny")
            return
        self._error(None)
        self.query_one("#model-info-box").loading = True
        self.check_worker(name.strip())

    @work(thread=True, exclusive=True, group="check", exit_on_error=False,
          description="checking the typed model")
    def check_worker(self, name: str) -> None:
        self.report(self.Described(name, check_model(name), chosen=True))

    def choose(self, name: str) -> None:
        """Make ``name`` the draft's base model."""
        if demo.is_demo(name):
            name = demo.DEMO_MODEL
        try:
            self.update_draft({"model.name": name})
        except LoradeckError as exc:
            self._error(exc.message)
            return
        self._error(None)
        self.notify(f"base model: {name}", timeout=3)

    def _error(self, text: str | None) -> None:
        error = self.query_one("#model-error", Static)
        error.update(text or "")
        error.display = bool(text)

    # ---- worker results and failures

    @on(Scanned)
    def _scanned(self, message: Scanned) -> None:
        self.query_one("#models", OptionList).loading = False
        self._fill_options(message.models)
        self.refresh_bindings()  # the list takes its keys back once loaded

    @on(Described)
    def _described(self, message: Described) -> None:
        name, info = message.name, message.info
        if message.chosen:
            self.query_one("#model-info-box").loading = False
            self.query_one("#model-info", Static).update(describe_lines(info))
            self.choose(name)
            return
        size = self._cached.get(name, {}).get("size_bytes")
        size = byte_size(size) if size is not None else None
        self.query_one("#model-info", Static).update(describe_lines(info, size))

    def show_worker_error(self, worker: Worker, error: BaseException) -> None:
        if worker.group == "scan":
            self.query_one("#models", OptionList).loading = False
        if worker.group in ("check", "describe"):
            self.query_one("#model-info-box").loading = False
        self._error(error_text(error.message if isinstance(error, LoradeckError)
                               and worker.group == "check" else error))
