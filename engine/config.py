"""The one validated run config: sections, defaults, YAML round trip and ``--set`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loradeck.engine.errors import LoradeckError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    name: str = "demo:tiny"
    revision: str | None = None
    quantization: Literal["none", "8bit", "4bit"] = "4bit"
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    trust_remote_code: bool = False


class DatasetSection(_Section):
    path: str = "demo"
    split: str = "train"
    format: Literal["auto", "instruction", "messages", "prompt-completion", "text"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict)
    template: Literal["auto", "chatml", "mistral", "alpaca"] = "auto"
    system_prompt: str | None = None
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    max_rows: int | None = Field(None, ge=1)

    @field_validator("columns")
    @classmethod
    def _known_roles(cls, v: dict[str, str]) -> dict[str, str]:
        allowed = {"instruction", "context", "response", "messages", "prompt", "completion",
                   "text", "system"}
        bad = sorted(set(v) - allowed)
        if bad:
            raise ValueError(f"unknown role {bad[0]!r}; allowed: {', '.join(sorted(allowed))}")
        return v


class LoraSection(_Section):
    r: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"
    variant: Literal["lora", "rslora", "dora"] = "lora"

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("needs at least one module name, or 'all-linear'")
        return v


class TrainingSection(_Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(4, ge=1)
    learning_rate: float = Field(2.0e-4, gt=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_length: int = Field(1024, ge=8)
    packing: bool = False
    padding_free: bool = True
    gradient_checkpointing: bool = True
    logging_steps: int = Field(10, ge=1)
    eval_steps: int = Field(50, ge=1)
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(3, ge=1)
    seed: int = 42
    num_processes: int | Literal["all"] = 1
    distributed: Literal["ddp", "fsdp"] = "ddp"
    num_machines: int = Field(1, ge=1)
    machine_rank: int = Field(0, ge=0)
    main_process_ip: str | None = None
    main_process_port: int | None = None
    oom_retry: bool = True
    liger: Literal["auto", "on", "off"] = "off"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError("must be -1 (use epochs) or a positive number of steps")
        return v

    @field_validator("liger", mode="before")
    @classmethod
    def _liger(cls, v: Any) -> Any:
        # YAML reads a bare on/off as a boolean
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("num_processes")
    @classmethod
    def _procs(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be 1 or more, or 'all' for every GPU")
        return v


class RunSection(_Section):
    name: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/\\ \t\n")):
            raise ValueError("must be a non-empty name without spaces or slashes")
        return v


class Config(_Section):
    model: ModelSection = Field(default_factory=ModelSection)
    dataset: DatasetSection = Field(default_factory=DatasetSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    run: RunSection = Field(default_factory=RunSection)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.lora.variant == "dora" and self.model.quantization == "8bit":
            raise ValueError("lora.variant: dora is not supported with model.quantization 8bit; "
                             "use 4bit or none")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


SECTIONS = ("model", "dataset", "lora", "training", "run")


def _describe(err: dict[str, Any]) -> tuple[str, str]:
    """Turn one pydantic error into (dotted key, what is allowed)."""
    loc = [str(p) for p in err.get("loc", ()) if not str(p).startswith(("function-", "int", "str"))
           or str(p) in SECTIONS]
    key = ".".join(str(p) for p in err.get("loc", ()))
    typ = err.get("type", "")
    got = err.get("input")
    ctx = err.get("ctx") or {}
    if typ == "extra_forbidden":
        section = ".".join(loc[:-1])
        allowed = _allowed_keys(section)
        return key, f"unknown key; allowed here: {', '.join(allowed)}"
    if typ == "literal_error":
        return key, f"must be one of {ctx.get('expected', '')} (got {got!r})"
    if typ in ("greater_than_equal", "greater_than", "less_than", "less_than_equal"):
        return key, f"{err['msg'].lower()} (got {got!r})"
    if typ.endswith("_parsing") or typ.endswith("_type"):
        return key, f"{err['msg'].lower()} (got {got!r})"
    msg = err.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        if msg.split(":", 1)[0] in _all_keys():
            key, msg = msg.split(":", 1)
            msg = msg.strip()
    return key or "config", msg


def _clean_key(key: str) -> str:
    """Drop pydantic's union branch names from a location."""
    parts = [p for p in key.split(".") if p not in ("int", "str", "list[str]", "literal['all']")
             and not p.startswith("function-")]
    return ".".join(parts)


def _allowed_keys(section: str) -> list[str]:
    if not section:
        return list(SECTIONS)
    model = Config.model_fields.get(section)
    if model is None:
        return []
    return list(model.annotation.model_fields)  # type: ignore[union-attr]


def _all_keys() -> set[str]:
    keys: set[str] = set()
    for s in SECTIONS:
        keys.update(f"{s}.{k}" for k in _allowed_keys(s))
    return keys


def validate(data: dict[str, Any] | None, source: str = "config") -> Config:
    """Validate a plain dict; raise LoradeckError naming the first bad dotted key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise LoradeckError("the config must be a mapping of sections (model, dataset, ...)",
                            kind="config", where=source)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key, what = _describe(err)
        key = _clean_key(key)
        raise LoradeckError(f"{key}: {what}", kind="config", where=source,
                            hint="fix the value in the file or with --set KEY=VALUE") from None


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``KEY=VALUE`` overrides, validate."""
    p = Path(path)
    if not p.is_file():
        raise LoradeckError("config file not found", kind="config", where=str(p),
                            hint="create one with: loradeck init")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise LoradeckError(f"not valid YAML: {getattr(exc, 'problem', exc)}", kind="config",
                            where=where, hint="fix the YAML syntax at that line") from None
    data = data or {}
    for item in overrides or []:
        apply_override(data, item)
    return validate(data, source=str(p))


def from_overrides(overrides: list[str] | None = None, base: Config | None = None) -> Config:
    """A config from defaults (or ``base``) plus ``KEY=VALUE`` overrides."""
    data = base.to_dict() if base else {}
    for item in overrides or []:
        apply_override(data, item)
    return validate(data, source="--set")


def parse_value(raw: str) -> Any:
    """A ``--set`` value: literal text unless it is clearly YAML (a number, a bool, null, or a
    flow list or mapping), so ``You are #1 helper`` and ``my #1.jsonl`` stay whole."""
    text = raw.strip()
    if not text:
        return ""
    if text[0] in "[{":
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return raw
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return raw
    if value is None and text.lower() in ("null", "~", "none"):
        return None
    if isinstance(value, (bool, int, float)) and not isinstance(value, str):
        return value
    return raw


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` to a nested dict, at any depth (see ``parse_value``)."""
    if "=" not in item:
        raise LoradeckError(f"--set {item!r}: expected KEY=VALUE, e.g. training.max_steps=20",
                            kind="config")
    key, raw = item.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if len(parts) < 2 or not all(parts):
        raise LoradeckError(f"--set {key!r}: expected a dotted key such as training.max_steps "
                            f"(sections: {', '.join(SECTIONS)})", kind="config")
    if parts[0] not in SECTIONS:
        raise LoradeckError(f"--set {key!r}: unknown section {parts[0]!r}; sections are "
                            f"{', '.join(SECTIONS)}", kind="config")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise LoradeckError(f"--set {key!r}: {where} is a value, not a mapping",
                                kind="config")
        node = child
    node[parts[-1]] = parse_value(raw)


def save(config: Config, path: str | Path) -> Path:
    """Write the config as YAML (no comments); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(config.to_yaml(), encoding="utf-8")
    return p


STARTER = """\
# loradeck run config. Every key has a default; run `loradeck train THIS_FILE`.
# Override any key on the command line: --set training.max_steps=100

model:
  name: {model}            # Hub id (org/name), local directory, or demo:tiny (offline)
  revision: null           # branch, tag or commit of a Hub model
  quantization: {quant}    # none | 8bit | 4bit (QLoRA: NF4 with double quantization)
  compute_dtype: auto      # auto (bf16 on GPUs that have it, else fp32) | bf16 | fp16 | fp32
  attn_implementation: auto  # auto | sdpa | eager | flash_attention_2
  trust_remote_code: false # run code shipped with the model; only for models you trust

dataset:
  path: {dataset}          # .jsonl .json .csv .parquet .txt file, Hub dataset id, or demo
  split: train
  format: auto             # auto | instruction | messages | prompt-completion | text
  columns: {{}}             # override detection, e.g. {{instruction: question, response: answer}}
  template: auto           # auto (the tokenizer's chat template) | chatml | mistral | alpaca
  system_prompt: null      # optional system message for every example
  eval_fraction: 0.1       # share of rows held out for eval loss
  max_rows: null           # use only the first N rows

lora:
  r: 16                    # rank: size of the adapter; 8-64 is usual
  alpha: 32                # scale: the update is multiplied by alpha / r
  dropout: 0.05
  target_modules: all-linear  # or a list, e.g. [q_proj, v_proj]
  bias: none               # none | all | lora_only
  variant: lora            # lora | rslora (alpha / sqrt(r)) | dora

training:
  epochs: 1
  max_steps: {max_steps}           # > 0 overrides epochs
  batch_size: {batch}           # micro-batch per device
  grad_accum: {accum}           # effective batch = batch_size * grad_accum * processes
  learning_rate: {lr}
  scheduler: cosine        # linear | cosine | constant | constant_with_warmup
  warmup_ratio: 0.03
  weight_decay: 0.0
  max_length: {max_length}        # tokens; longer rows are cut and counted
  packing: false           # pack short rows together
  padding_free: true       # flatten each batch into one sequence, no padding computed
                           # (no effect with packing, which is already, or batch_size 1)
  gradient_checkpointing: true
  logging_steps: {logging}
  eval_steps: {eval_steps}
  save_steps: {save_steps}
  save_total_limit: 3      # keep this many checkpoints
  seed: 42
  num_processes: 1         # > 1 or all: several GPUs through accelerate
  distributed: ddp         # ddp | fsdp
  oom_retry: true          # on out-of-memory, retry with half the micro-batch
  liger: off               # Liger kernels: off | on | auto (on CUDA when installed); unmeasured
  device: auto             # auto | cpu | cuda

run:
  name: null               # run id prefix; default: model and date
"""


def starter_text(demo: bool = False) -> str:
    """The commented starter config written by ``loradeck init``."""
    if demo:
        # demo:tiny learns its rows in 300 steps at 2e-3 (about 10 s on a CPU core)
        values = dict(model="demo:tiny", quant="none", dataset="demo", max_steps=300, batch=4,
                      accum=1, lr="2.0e-3", max_length=256, logging=5, eval_steps=25,
                      save_steps=50)
    else:
        values = dict(model="demo:tiny", quant="4bit", dataset="demo", max_steps=-1, batch=4,
                      accum=4, lr="2.0e-4", max_length=1024, logging=10, eval_steps=50,
                      save_steps=50)
    return STARTER.format(**values)


def demo_config() -> Config:
    """The config ``loradeck --demo`` and ``init --demo`` start from."""
    return validate(yaml.safe_load(starter_text(demo=True)), source="demo")
