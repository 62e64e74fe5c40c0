"""LoRA: method, quantization, rank, alpha, dropout, targets and the training settings, validated
as you type; presets; a line of help per knob; trainable parameters and the memory estimate;
save and load the config as YAML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.validation import ValidationResult, Validator
from textual.widgets import Checkbox, Input, Label, Select, Static
from textual.worker import Worker

from loradeck.engine import config as cfg
from loradeck.engine.errors import LoradeckError, error_text
from loradeck.tui.screens import LoradeckScreen, changed_config
from loradeck.tui.widgets import Field, HelpLine, KeysFooter, NavBar
from loradeck.tui.widgets.line_input import LineInput

DEFAULT_CONFIG_FILE = "loradeck.yaml"


@dataclass(frozen=True)
class Knob:
    """One setting on the form: the dotted config key, its label and kind. Its help line and
    choices are the config field's own (``loradeck.engine.config``), read when first drawn."""

    key: str
    label: str
    kind: str  # int | float | text | targets | bool | choice

    @property
    def help(self) -> str:
        from loradeck.engine.config import field_of

        return field_of(self.key).description or ""

    @property
    def choices(self) -> tuple[str, ...]:
        from loradeck.engine.config import choices_of

        return choices_of(self.key)

    @property
    def id(self) -> str:
        return "f-" + self.key.replace(".", "-")


LORA_KNOBS: tuple[Knob, ...] = (
    Knob("lora.variant", "Method", "choice"),
    Knob("model.quantization", "Quantization", "choice"),
    Knob("lora.r", "Rank r", "int"),
    Knob("lora.alpha", "Alpha", "float"),
    Knob("lora.dropout", "Dropout", "float"),
    Knob("lora.target_modules", "Targets", "targets"),
    Knob("lora.group_size", "QA group", "choice"),
)

TRAINING_KNOBS: tuple[Knob, ...] = (
    Knob("training.method", "Training", "choice"),
    Knob("training.epochs", "Epochs", "float"),
    Knob("training.max_steps", "Max steps", "int"),
    Knob("training.batch_size", "Batch size", "int"),
    Knob("training.grad_accum", "Grad accum", "int"),
    Knob("training.learning_rate", "Learning rate", "float"),
    Knob("training.scheduler", "Scheduler", "choice"),
    Knob("training.warmup_ratio", "Warmup", "float"),
    Knob("training.max_length", "Max length", "int"),
    Knob("training.padding_free", "Padding-free", "bool"),
    Knob("training.packing", "Packing", "bool"),
    Knob("training.gradient_checkpointing", "Grad ckpt", "bool"),
    Knob("training.logging_steps", "Log every", "int"),
    Knob("training.eval_steps", "Eval every", "int"),
    Knob("training.save_steps", "Save every", "int"),
)

KNOBS = LORA_KNOBS + TRAINING_KNOBS

_QUICK = {"model.name": "demo:tiny", "model.quantization": "none", "training.device": "cpu",
          "lora.variant": "lora", "lora.r": 8, "lora.alpha": 16, "lora.dropout": 0.05,
          "lora.target_modules": "all-linear", "training.max_steps": 30,
          "training.batch_size": 4, "training.grad_accum": 1, "training.learning_rate": 1e-3,
          "training.max_length": 256, "training.packing": False,
          "training.gradient_checkpointing": False, "training.logging_steps": 2,
          "training.eval_steps": 10, "training.save_steps": 10}


def _gpu(quant: str, variant: str, r: int, alpha: float, batch: int, accum: int,
         max_length: int, gc: bool, lr: float = 2e-4) -> dict[str, Any]:
    return {"model.quantization": quant, "training.device": "auto", "lora.variant": variant,
            "lora.r": r, "lora.alpha": alpha, "lora.dropout": 0.05,
            "lora.target_modules": "all-linear", "training.max_steps": -1,
            "training.epochs": 1, "training.batch_size": batch, "training.grad_accum": accum,
            "training.learning_rate": lr, "training.scheduler": "cosine",
            "training.warmup_ratio": 0.03, "training.max_length": max_length,
            "training.gradient_checkpointing": gc, "training.logging_steps": 25,
            "training.eval_steps": 100, "training.save_steps": 100}


PRESETS: dict[str, dict[str, Any]] = {
    "Quick CPU test (demo:tiny, 30 steps)": _QUICK,
    "QLoRA: 7B on a 24 GB GPU": _gpu("4bit", "lora", 16, 32, 4, 4, 1024, True),
    "QLoRA: 13B on a 24 GB GPU": _gpu("4bit", "lora", 16, 32, 2, 8, 1024, True),
    "LoRA 16-bit: 7B on an 80 GB GPU": _gpu("none", "lora", 16, 32, 16, 1, 2048, False),
    "QLoRA: 70B on an 80 GB GPU": _gpu("4bit", "lora", 16, 32, 1, 16, 1024, True),
    "rsLoRA r=64: 7B on a 24 GB GPU": _gpu("4bit", "rslora", 64, 16, 4, 4, 1024, True, 1e-4),
    "DoRA: 7B on a 48 GB GPU": _gpu("4bit", "dora", 16, 32, 4, 4, 1024, True),
}


def get_value(config: cfg.Config, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(config, section), name)


def format_value(value: Any) -> str:
    """How a config value is written in a form field."""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def parse_value(kind: str, text: str) -> Any:
    """The config value a field's text stands for (left as text when it does not parse,
    so validation names the problem)."""
    text = text.strip()
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            return text
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            return text
    if kind == "targets":
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        if "," in text or " " in text.strip() or not text:
            return [t.strip().strip("'\"") for t in text.replace(" ", ",").split(",")
                    if t.strip()]
        return text
    return text


def scale_line(config: cfg.Config) -> str:
    """How alpha scales the update for the chosen method."""
    r, alpha = config.lora.r, config.lora.alpha
    if config.lora.variant == "rslora":
        return f"update = alpha/√r · BA = {alpha:g}/√{r} = {alpha / math.sqrt(r):.3g} · BA"
    return f"update = alpha/r · BA = {alpha:g}/{r} = {alpha / r:.3g} · BA"


GPU_SIZES_GB = (16, 24, 48, 80)
SUGGEST_FOR_GB = 24


def gpu_free_gb() -> float | None:
    """Free memory of the first GPU (nvidia-smi through the engine; no torch in the app)."""
    from loradeck.engine.system.gpus import free_memory_gb

    return free_memory_gb()


def estimate_lines(config: cfg.Config, free_gb: float | None = None) -> list[str]:
    """Trainable parameters and the peak memory estimate (loradeck.engine.train.estimate), as short lines."""
    from loradeck.engine.train import (
        estimate as est,  # light: arithmetic on the model's config.json
    )
    from loradeck.engine.units import count as human_count

    e = est.for_config(config)
    if e is None:
        return ["model shape unknown: the estimate", "needs the model's config.json",
                "(a cached or local model, or a", "well-known Hub id)"]
    pct = 100.0 * e.trainable_params / max(e.total_params, 1)
    lines = [f"trainable {human_count(e.trainable_params)} of "
             f"{human_count(e.total_params)} ({pct:.2f}%)",
             f"peak GPU memory ~{e.total_gb:.1f} GB",
             f" weights {e.weights_gb:.2f} · LoRA {e.lora_gb:.2f}",
             f" activations {e.activations_gb:.2f} · logits {e.logits_gb:.2f}"]
    if free_gb is None:  # no GPU here: compare with the usual sizes, suggest for 24 GB
        lines.append("fits: " + " ".join(f"{g}{' GB' if i == 0 else ''} "
                                         f"{'✓' if e.total_gb <= g else '✗'}"
                                         for i, g in enumerate(GPU_SIZES_GB)))
        free_gb = float(SUGGEST_FOR_GB)
        verdict = e.fits(free_gb)
        if not verdict.fits:
            lines.append(f"for a {SUGGEST_FOR_GB} GB GPU:")
    else:
        verdict = e.fits(free_gb)
        lines.append(verdict.message)
    for sg in verdict.suggestions[:3]:
        lines.append(f" try {', '.join(sg.set_args())} (~{sg.total_gb:.1f} GB)")
    lines.extend(e.notes)
    return lines


class ConfigValidator(Validator):
    """Validates one field's text as the value of its dotted key in the app's draft."""

    def __init__(self, screen: LoraScreen, knob: Knob) -> None:
        super().__init__()
        self.screen = screen
        self.knob = knob

    def validate(self, value: str) -> ValidationResult:
        try:
            changed_config(self.screen.draft, {self.knob.key: parse_value(self.knob.kind, value)})
        except LoradeckError as exc:
            return self.failure(exc.message)
        return self.success()


class LoraScreen(LoradeckScreen):
    """The LoRA and training settings of the draft config."""

    MODE = "lora"
    AUTO_FOCUS = "#preset"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save", "Save YAML", id="lora.save",
                tooltip="Save the config as YAML to the file named below"),
        Binding("ctrl+o", "load", "Load YAML", id="lora.load",
                tooltip="Load the config from the YAML file named below"),
        Binding("slash", "edit_path", "File", id="lora.file",
                tooltip="Type the YAML file to save to or load from"),
        Binding("f5", "estimate", "Estimate", id="lora.estimate", show=False,
                tooltip="Compute the memory estimate again"),
    ]
    DEFAULT_CSS = """
    LoraScreen .row { height: 1; }
    LoraScreen .row > Label { padding: 0 1; width: 16; }
    LoraScreen #preset { width: 1fr; }
    LoraScreen #config-path { width: 1fr; }
    LoraScreen #lora-body { height: 1fr; }
    LoraScreen #lora-form { width: 1fr; padding: 0 1; scrollbar-size-vertical: 1; }
    LoraScreen .section { text-style: bold; color: $text-primary; }
    LoraScreen #lora-form > .section { margin-top: 1; }
    LoraScreen #lora-side { width: 32; border-left: solid $panel-lighten-2; padding: 0 1; }
    LoraScreen #scale { color: $text-accent; height: auto; }
    LoraScreen #estimate { height: auto; }
    LoraScreen #lora-status { height: auto; padding: 0 1; }
    LoraScreen #lora-status.error { color: $text-error; }
    LoraScreen #lora-status.ok { color: $text-success; }
    LoraScreen.-narrow .field-help { display: none; }
    """
    NARROW = 110
    """Narrower than this, the help column is hidden: the help line under the form shows the
    focused field's help whole."""

    def __init__(self) -> None:
        super().__init__()
        self._last_estimate: tuple | None = None
        self._gpu_free: float | None | bool = False  # False: not looked yet

    # ---- layout

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        with Horizontal(classes="row"):
            yield Label("Preset")
            yield Select([(name, name) for name in PRESETS], prompt="choose a preset…",
                         id="preset", compact=True,
                         tooltip="Fill in tested settings for a model size and GPU")
        with Horizontal(id="lora-body"):
            with VerticalScroll(id="lora-form", can_focus=False):
                yield Static("LoRA", classes="section")
                for knob in LORA_KNOBS:
                    yield self._field(knob)
                yield Static("Training", classes="section")
                for knob in TRAINING_KNOBS:
                    yield self._field(knob)
            with Vertical(id="lora-side"):
                yield Static("Estimate", classes="section")
                yield Static("", id="scale", markup=False)
                yield Static("", id="estimate", markup=False)
        with Horizontal(classes="row"):
            yield Label("Config file")
            yield LineInput(DEFAULT_CONFIG_FILE, id="config-path", compact=True,
                            tooltip="YAML file for ctrl+s (save) and ctrl+o (load)")
        yield Static("", id="lora-status", markup=False)
        yield HelpLine("tab/shift+tab move · values are checked as you type · "
                       "ctrl+s save · ctrl+o load · Esc back", id="help-line", wrap=True)
        yield KeysFooter()

    def _field(self, knob: Knob) -> Field:
        value = get_value(self.draft, knob.key)
        control: Any
        if knob.kind == "choice":
            numeric = isinstance(value, int) and not isinstance(value, bool)
            control = Select([(c, int(c) if numeric else c) for c in knob.choices], value=value,
                             allow_blank=False, compact=True, id=knob.id)
        elif knob.kind == "bool":
            control = Checkbox("on" if value else "off", value=bool(value), compact=True,
                               id=knob.id)
        else:
            control = LineInput(format_value(value), compact=True, id=knob.id,
                                validators=[ConfigValidator(self, knob)],
                                validate_on=["changed"])
        return Field(knob.key, knob.label, control, knob.help, id=f"field-{knob.id[2:]}")

    def on_mount(self) -> None:
        self.watch(self.lapp, "draft", self._draft_changed, init=False)
        self._show_scale()
        self.action_estimate()

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.width < self.NARROW, "-narrow")

    def on_screen_resume(self) -> None:
        self._sync_form(self.draft)
        self.action_estimate()

    # ---- editing

    def knob_for(self, widget_id: str | None) -> Knob | None:
        return next((k for k in KNOBS if k.id == widget_id), None)

    def field_for(self, knob: Knob) -> Field:
        return self.query_one(f"#field-{knob.id[2:]}", Field)

    def _apply(self, knob: Knob, value: Any) -> None:
        field = self.field_for(knob)
        changes = {knob.key: value}
        base_freed = (knob.key == "lora.variant" and value == "qalora"
                      and self.draft.model.quantization != "none")
        if base_freed:  # qalora quantizes the base itself
            changes["model.quantization"] = "none"
        try:
            config = self.update_draft(changes)
        except LoradeckError as exc:
            field.set_error(exc.message)
            return
        field.set_error(None)
        if base_freed:
            self._sync_form(config)
            self._status("qalora quantizes the base itself (INT4 groups of lora.group_size): "
                         "model.quantization set to none")

    @on(Input.Changed, ".field-control")
    def _input_changed(self, event: Input.Changed) -> None:
        knob = self.knob_for(event.input.id)
        if knob is None:
            return
        event.stop()
        result = event.validation_result
        if result is not None and not result.is_valid:
            self.field_for(knob).set_error(result.failure_descriptions[0])
            return
        value = parse_value(knob.kind, event.value)
        if value == get_value(self.draft, knob.key):
            self.field_for(knob).set_error(None)
            return
        self._apply(knob, value)

    @on(Select.Changed, ".field-control")
    def _select_changed(self, event: Select.Changed) -> None:
        knob = self.knob_for(event.select.id)
        if knob is None or event.value is Select.NULL:
            return
        event.stop()
        if event.value != get_value(self.draft, knob.key):
            self._apply(knob, event.value)

    @on(Checkbox.Changed, ".field-control")
    def _checkbox_changed(self, event: Checkbox.Changed) -> None:
        knob = self.knob_for(event.checkbox.id)
        if knob is None:
            return
        event.stop()
        event.checkbox.label = "on" if event.value else "off"
        if event.value != get_value(self.draft, knob.key):
            self._apply(knob, event.value)

    @on(Select.Changed, "#preset")
    def _preset_chosen(self, event: Select.Changed) -> None:
        if event.value is Select.NULL:
            return
        self.apply_preset(str(event.value))

    def apply_preset(self, name: str) -> None:
        """Fill the form (and the draft) with the preset ``name``."""
        try:
            config = changed_config(self.draft, PRESETS[name], source=f"preset {name!r}")
        except LoradeckError as exc:
            self._status(exc.line(), error=True)
            return
        self.lapp.set_draft(config)
        self._status(f"preset: {name}")

    def _draft_changed(self, config: cfg.Config) -> None:
        # the field being typed in is left alone: its Changed messages lag its keys, so the
        # draft may hold what it showed a key ago, and writing that back would eat the keys
        # typed since (End BSpace 3 2, at once, once turned 8 into 83, then 836)
        self._sync_form(config, typing=self.focused if isinstance(self.focused, Input)
                        else None)
        self._show_scale()
        self.action_estimate()

    def _sync_form(self, config: cfg.Config, typing: Input | None = None) -> None:
        """Show ``config`` in the fields that do not already mean the same value (and drop
        their errors: what they show is valid now), except ``typing``, the field in use."""
        for knob in KNOBS:
            value = get_value(config, knob.key)
            control = self.query_one(f"#{knob.id}")
            field = self.field_for(knob)
            if control is typing:
                continue
            if isinstance(control, Input):
                if parse_value(knob.kind, control.value) != value or field.error:
                    control.value = format_value(value)
            elif isinstance(control, Checkbox):
                if control.value != bool(value):
                    control.value = bool(value)
            elif isinstance(control, Select) and control.value != value:
                control.value = value
            field.set_error(None)

    # ---- estimate

    def _show_scale(self) -> None:
        d = self.draft
        t = d.training
        eff = t.batch_size * t.grad_accum * (t.num_processes if isinstance(
            t.num_processes, int) else 1)
        steps = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epoch(s)"
        self.query_one("#scale", Static).update(
            f"{d.model.name}\n{scale_line(d)}\neffective batch {eff} · {steps}")

    def action_estimate(self) -> None:
        key = (self.draft.model.name, self.draft.model.revision, self.draft.model.quantization,
               self.draft.lora.model_dump_json(), self.draft.training.model_dump_json())
        if key == self._last_estimate:
            return
        self._last_estimate = key
        self.estimate_worker(self.draft, self._gpu_free)

    @work(thread=True, exclusive=True, group="estimate", exit_on_error=False,
          description="estimating memory and trainable parameters")
    def estimate_worker(self, config: cfg.Config, gpu_free: float | None | bool) -> None:
        if gpu_free is False:  # not looked yet: once, here, off the UI thread
            gpu_free = gpu_free_gb()
        self.report(self.Estimated(estimate_lines(config, gpu_free), gpu_free))

    class Estimated(Message, bubble=False):
        """The memory and parameter estimate, and the free GPU memory it was compared with."""

        def __init__(self, lines: list[str], gpu_free: float | None | bool) -> None:
            super().__init__()
            self.lines, self.gpu_free = lines, gpu_free

    @on(Estimated)
    def _estimated(self, message: Estimated) -> None:
        self._gpu_free = message.gpu_free
        self.query_one("#estimate", Static).update("\n".join(message.lines))

    def show_worker_error(self, worker: Worker, error: BaseException) -> None:
        if worker.group == "estimate":
            self._last_estimate = None
            self.query_one("#estimate", Static).update(f"no estimate: {error_text(error)}")
        else:
            super().show_worker_error(worker, error)

    # ---- save / load

    def _path(self) -> Path | None:
        text = self.query_one("#config-path", Input).value.strip()
        if not text:
            self._status("type a file name for the config, e.g. loradeck.yaml", error=True)
            return None
        return Path(text).expanduser()

    def _invalid_fields(self) -> list[str]:
        return [f.key for f in self.query(Field) if f.has_class("-invalid")]

    def action_edit_path(self) -> None:
        self.query_one("#config-path", Input).focus()

    def action_save(self) -> None:
        """Save the draft config as YAML."""
        path = self._path()
        if path is None:
            return
        try:
            cfg.save(self.draft, path)
        except OSError as exc:
            self._status(f"{path}: cannot write: {exc.strerror}", error=True)
            return
        bad = self._invalid_fields()
        note = f" (not saved, still invalid: {', '.join(bad)})" if bad else ""
        self._status(f"saved {path}{note}", error=bool(bad))

    def action_load(self) -> None:
        """Load a YAML config into the draft."""
        path = self._path()
        if path is None:
            return
        try:
            config = cfg.load(path)
        except LoradeckError as exc:
            self._status(exc.line(), error=True)
            return
        self.lapp.set_draft(config)
        self._sync_form(config)
        self._status(f"loaded {path}")

    def _status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#lora-status", Static)
        status.update(text)
        status.set_class(error, "error")
        status.set_class(not error, "ok")
