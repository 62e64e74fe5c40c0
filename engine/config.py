"""The one validated run config: sections, defaults, YAML round trip and ``--set`` overrides."""

from __future__ import annotations

import os
import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loradeck.engine.enums import (
    DataRole,
    DatasetFormat,
    NotifyOn,
    PreferenceLoss,
    Quantization,
    Template,
    TrainingMethod,
    literal,
    values,
)
from loradeck.engine.errors import ErrorKind, LoradeckError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


MAX_COUNT = 10**9  # the largest count (steps, rows, tokens) a config may ask for


class ModelSection(_Section):
    name: str = Field("demo:tiny", description="Hub id (org/name), local directory, or demo:tiny (offline)")
    revision: str | None = Field(None, description="branch, tag or commit of a Hub model")
    quantization: literal(Quantization) = Field("auto", description="base weights: auto = 4bit on a CUDA GPU, none on a CPU (where 16-bit is several times faster) · 4bit = QLoRA (NF4, double quant, ~0.5 byte/param) · 8bit · none = 16-bit")
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto picks bf16 on GPUs that have it, else fp16 on GPUs and fp32 on the CPU")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field("auto", description="the attention kernel; auto lets transformers choose")
    trust_remote_code: bool = Field(False, description="run Python code shipped with the model (also needs --trust-remote-code); only for models you trust")
    adapter: str | None = Field(None, description="start from this adapter and train it further (a second stage, e.g. DPO after SFT): a run id, a checkpoint directory or an adapter directory")


class DatasetSection(_Section):
    path: str = Field("demo", description=".jsonl .json .csv .parquet .txt file, Hub dataset id, or demo")
    split: str = Field("train", description="the split of a Hub dataset")
    format: literal(DatasetFormat) = Field("auto", description="the row shape; auto detects it from the columns")
    columns: dict[str, str] = Field(default_factory=dict, description="override detection, e.g. {instruction: question, response: answer}")
    template: literal(Template) = Field("auto", description="auto uses the tokenizer's chat template")
    system_prompt: str | None = Field(None, description="a system message for every example")
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of rows held out for the eval loss")
    max_rows: int | None = Field(None, ge=1, le=10**12, description="use only the first N rows")

    @field_validator("columns")
    @classmethod
    def _known_roles(cls, v: dict[str, str]) -> dict[str, str]:
        allowed = set(values(DataRole))
        bad = sorted(set(v) - allowed)
        if bad:
            raise ValueError(f"unknown role {bad[0]!r}; allowed: {', '.join(sorted(allowed))}")
        return v


class LoraSection(_Section):
    r: int = Field(16, ge=1, le=1024, description="rank: each target W gets B (d x r) and A (r x k); higher r = more capacity, memory and time; 8-64 is usual")
    alpha: float = Field(32, gt=0, le=1e6, description="scale of the update: W + (alpha/r)·BA; alpha = 2·r is a common start")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapter's input during training; 0.05-0.1 against overfitting")
    target_modules: str | list[str] = Field("all-linear", description="layers that get adapters: all-linear, or a list of names such as [q_proj, v_proj]")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="which biases train with the adapter")
    variant: Literal["lora", "rslora", "dora", "qalora"] = Field("lora", description="lora: W + (alpha/r)·BA · rslora: scale alpha/√r, steadier at high rank · dora: also learns each weight's magnitude · qalora: a group INT4 base and a pooled adapter, a slightly coarser update that merges into a 4-bit model with no second quantization (needs model.quantization: none)")
    group_size: Literal[32, 64, 128] = Field(32, description="qalora only: input columns per INT4 group (scale and offset each); 32 = GGUF Q4_1 blocks, exported exactly; 64 and 128 are smaller and coarser")

    @field_validator("group_size", mode="before")
    @classmethod
    def _group(cls, v: Any) -> Any:
        # a form field or --set gives the number as text
        return int(v) if isinstance(v, str) and v.strip().isdigit() else v

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("needs at least one module name, or 'all-linear'")
        return v


class TrainingSection(_Section):
    method: literal(TrainingMethod) = Field("sft", description="sft: learn the answers · dpo, orpo: prefer the chosen answer to the rejected one (prompt, chosen, rejected rows) · kto: answers labelled good or bad (prompt, completion, label) · grpo: rewards on the model's own answers (prompt rows, grpo.rewards)")
    epochs: float = Field(1.0, gt=0, le=1e6, description="passes over the training rows (ignored when max_steps > 0)")
    max_steps: int = Field(-1, le=MAX_COUNT, description="-1: train for the epochs; > 0: stop after this many optimizer steps")
    batch_size: int = Field(4, ge=1, le=65536, description="micro-batch per device; lower it (and raise grad_accum) when out of memory")
    grad_accum: int = Field(4, ge=1, le=65536, description="micro-batches per step: effective batch = batch_size × grad_accum × processes")
    learning_rate: float = Field(2.0e-4, gt=0, lt=1, description="step size; 2e-4 is the usual LoRA rate, lower it for high r or long runs")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field("cosine", description="how the rate changes over the run: cosine decays to 0 after the warmup")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="share of the steps spent raising the rate from 0 (0.03 = 3%)")
    weight_decay: float = Field(0.0, ge=0.0, description="weight decay of the optimizer")
    max_length: int = Field(1024, ge=8, le=10**7, description="tokens per row; longer rows are cut and counted (the Data screen counts them)")
    packing: bool = Field(False, description="pack rows into full-length sequences (TRL bfd); behind padding-free with SDPA")
    padding_free: bool = Field(True, description="flatten each batch into one sequence, no padding computed: 1.4x on rows of mixed lengths (no effect with packing or batch_size 1)")
    gradient_checkpointing: bool = Field(True, description="recompute activations in the backward pass: much less memory, ~30% slower")
    logging_steps: int = Field(10, ge=1, le=MAX_COUNT, description="steps between loss lines in the log")
    eval_steps: int = Field(50, ge=1, le=MAX_COUNT, description="steps between eval-loss measurements")
    save_steps: int = Field(50, ge=1, le=MAX_COUNT, description="steps between checkpoints (stop and resume continue from the last one)")
    save_total_limit: int = Field(3, ge=1, le=10**6, description="keep this many complete checkpoints (older ones go once a new one is complete)")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="seed for data order, dropout and initialisation")
    num_processes: int | Literal["all"] = Field(1, description="> 1, or all: several GPUs through accelerate (processes on all machines)")
    distributed: Literal["ddp", "fsdp"] = Field("ddp", description="ddp copies the model to each process; fsdp shards the 16-bit weights (one machine)")
    num_machines: int = Field(1, ge=1, le=4096, description="machines taking part; each runs loradeck with the same config")
    machine_rank: int = Field(0, ge=0, le=4095, description="this machine's number, 0 for the main one")
    main_process_ip: str | None = Field(None, description="address of machine 0 (several machines; the rendezvous listens there)")
    main_process_port: int | None = Field(None, ge=1, le=65535, description="port of the rendezvous on machine 0 (default: a free one, or 29500 across machines)")
    oom_retry: bool = Field(True, description="on out-of-memory, retry from the last checkpoint with half the micro-batch")
    liger: Literal["auto", "on", "off"] = Field("off", description="Liger kernels: off, on, or auto (on CUDA when installed); unmeasured")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train: auto picks a CUDA GPU when there is one")
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = Field("none", description="a tracker the Trainer also reports to (loradeck's events are always written): tensorboard (logs in RUN/checkpoints/runs; loradeck[tensorboard]), wandb (loradeck[wandb], then wandb login) or trackio (loradeck[trackio]); none by default")

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
        if isinstance(v, int) and not 1 <= v <= 4096:
            raise ValueError("must be 1 to 4096, or 'all' for every GPU")
        return v


class EvalSection(_Section):
    sample_prompts: int = Field(3, ge=0, le=20, description="at each eval step, greedy answers to the first N eval rows, shown beside their references (0: none)")
    prompts: list[str] = Field(default_factory=list, description="your own prompts for those answers, in place of the eval rows, e.g. [\"What is LoRA?\"]")
    sample_tokens: int = Field(48, ge=1, le=1024, description="new tokens at most in each sample answer")
    max_rows: int = Field(1000, ge=1, le=10**7, description="at most this many rows held out for the eval loss (dataset.eval_fraction of a large set would make every eval slow)")
    judge_template: str | None = Field(None, description="loradeck eval --judge: the judge prompt as a Jinja file (prompt, reference, answer_a, answer_b); default: loradeck's")


class QueueSection(_Section):
    gpus_per_run: int | Literal["all"] = Field("all", description="loradeck queue: GPUs each queued run gets (CUDA_VISIBLE_DEVICES), so runs go side by side on their own GPUs; all: one run at a time on every GPU")
    stop_on_failure: bool = Field(False, description="loradeck queue: stop the queue when this run fails or runs out of memory (default: go on with the next)")

    @field_validator("gpus_per_run")
    @classmethod
    def _per_run(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 4096:
            raise ValueError("must be 1 to 4096, or 'all'")
        return v


class PreferenceSection(_Section):
    beta: float = Field(0.1, gt=0, le=100, description="dpo, kto, orpo: how far from the base the adapter may move (DPO, KTO) or the weight of the preference term (ORPO); 0.1 is usual")
    loss_type: literal(PreferenceLoss) = Field("sigmoid", description="dpo: the loss, through TRL (sigmoid is DPO's own; ipo, hinge and the others are its variants)")


REWARD_BUILTINS = ("exact_answer", "json_valid")
REWARD_PREFIXES = ("regex:", "max_length:", "contains:")


class GrpoSection(_Section):
    rewards: list[str] = Field(default_factory=list, description="grpo: what scores each answer (summed): exact_answer (the row's answer column), regex:PATTERN, json_valid, max_length:N, contains:TEXT, or your own FILE.py:FUNCTION (runs your code: needs --trust-remote-code)")
    num_generations: int = Field(4, ge=2, le=256, description="grpo: answers sampled per prompt and compared with each other")
    max_completion_length: int = Field(128, ge=1, le=10**6, description="grpo: new tokens at most in each sampled answer")
    beta: float = Field(0.0, ge=0, le=100, description="grpo: weight of the KL term that keeps the adapter near the base (0: none, TRL's default)")
    temperature: float = Field(1.0, gt=0, le=10, description="grpo: sampling temperature of the answers")

    @field_validator("rewards", mode="before")
    @classmethod
    def _one_or_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("rewards")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for spec in v:
            if spec in REWARD_BUILTINS or spec.startswith(REWARD_PREFIXES):
                if spec.startswith("max_length:") and not spec.split(":", 1)[1].isdigit():
                    raise ValueError(f"{spec!r}: max_length needs a number of characters, "
                                     "e.g. max_length:200")
                continue
            path, sep, fn = spec.rpartition(":")
            if not (sep and path.endswith(".py") and fn.isidentifier()):
                raise ValueError(f"unknown reward {spec!r}; use exact_answer, json_valid, "
                                 "regex:PATTERN, max_length:N, contains:TEXT or FILE.py:FUNCTION")
        return v


MASKED_URL = "://***"  # what a run's saved config keeps of a notification URL: its scheme


class NotifySection(_Section):
    urls: list[str] = Field(default_factory=list, description="apprise URLs told when a detached run ends: ntfy://topic, slack://…, discord://…, tgram://…, mailtos://…, or json://host/path for a plain JSON webhook; a run's saved files keep only their scheme")
    on: list[literal(NotifyOn)] = Field(default_factory=lambda: list(values(NotifyOn)), description="what is told: done, failed, stopped, and queue_empty (the queue runner ran out of work)")

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        """YAML 1.1 reads a bare ``on:`` key as true: take it as ``on``."""
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    @field_validator("urls", "on", mode="before")
    @classmethod
    def _one_or_commas(cls, v: Any) -> Any:
        """``--set notify.on=done,failed`` and a single URL read as lists."""
        if isinstance(v, str):
            return [v] if "://" in v else [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for i, url in enumerate(v):
            scheme, sep, rest = url.partition("://")
            if not sep or not scheme.replace("+", "").isalnum() or not rest.strip():
                raise ValueError(f"notify.urls: entry {i + 1} is not an apprise URL such as "
                                 "ntfy://my-topic or json://host/path")
        return v

    def masked(self) -> NotifySection:
        """This section as a run's files keep it: each URL's scheme only."""
        return self.model_copy(update={"urls": [u.partition("://")[0] + MASKED_URL
                                                 for u in self.urls]})


class RunSection(_Section):
    name: str | None = Field(None, description="run id prefix; default: the model and the date")

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
    preference: PreferenceSection = Field(default_factory=PreferenceSection)
    grpo: GrpoSection = Field(default_factory=GrpoSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    queue: QueueSection = Field(default_factory=QueueSection)
    notify: NotifySection = Field(default_factory=NotifySection)
    run: RunSection = Field(default_factory=RunSection)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.lora.variant == "dora" and self.model.quantization == "8bit":
            raise ValueError("lora.variant: dora is not supported with model.quantization 8bit; "
                             "use 4bit or none")
        if self.lora.variant == "qalora" and self.model.quantization not in ("none", "auto"):
            raise ValueError(f"model.quantization: must be none with lora.variant qalora (got "
                             f"{self.model.quantization}); qalora quantizes the base itself")
        return self

    @model_validator(mode="after")
    def _method(self) -> Config:
        if self.training.method == "grpo" and not self.grpo.rewards:
            raise ValueError("grpo.rewards: GRPO needs at least one reward, e.g. [exact_answer] "
                             "or [\"regex:^<answer>.*</answer>$\"]")
        t, g = self.training, self.grpo
        if t.method == "grpo" and (t.batch_size * t.grad_accum) % g.num_generations:
            raise ValueError(f"training.batch_size: batch_size × grad_accum "
                             f"({t.batch_size * t.grad_accum}) must be a multiple of "
                             f"grpo.num_generations ({g.num_generations}): each step compares "
                             "the answers to a prompt with each other")
        if self.model.adapter and self.lora.variant == "qalora":
            raise ValueError("model.adapter: an adapter is trained further as it is; "
                             "lora.variant qalora needs a fresh adapter (drop model.adapter)")
        if self.training.method != "sft" and self.training.packing:
            raise ValueError(f"training.packing: only for training.method sft (got "
                             f"{self.training.method}); set it to false")
        return self

    @model_validator(mode="after")
    def _fsdp_shards_16_bit_weights(self) -> Config:
        t, q = self.training, self.model.quantization
        if t.distributed == "fsdp" and t.num_processes != 1 and q not in ("none", "auto"):
            raise ValueError(f"model.quantization: {q} weights are not sharded with "
                             "training.distributed: fsdp; set model.quantization: none (FSDP "
                             "shards the 16-bit weights over the processes), or "
                             f"training.distributed: ddp to train on {q} weights")
        return self

    @model_validator(mode="after")
    def _fsdp_on_one_machine(self) -> Config:
        # Sharded checkpoints are written by every process of every machine (and described by
        # one metadata file from rank 0), so no machine's own run directory holds a checkpoint
        # it can resume from, and the final adapter is gathered on rank 0 only.
        if self.training.distributed == "fsdp" and self.training.num_machines > 1:
            raise ValueError("training.num_machines: training.distributed fsdp runs on one "
                             "machine; set training.num_machines: 1, or training.distributed: "
                             "ddp to train on several machines")
        return self

    @model_validator(mode="after")
    def _machines_need_the_main_address(self) -> Config:
        if self.training.num_machines > 1 and not self.training.main_process_ip:
            raise ValueError("training.main_process_ip: several machines need the address of "
                             "the main one; set it to the IP of the machine with machine_rank "
                             "0, and the same training.main_process_port on every machine")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


SECTIONS = ("model", "dataset", "lora", "training", "preference", "grpo", "eval", "queue",
            "notify", "run")

MAX_YAML_VALUES = 100_000  # values in a config once its aliases are expanded
MAX_YAML_DEPTH = 64
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxtuple, _REPR.maxlist, _REPR.maxdict, _REPR.maxset = 2, 4, 4, 4, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 80, 80, 40


def shown(value: Any) -> str:
    """A value as a person reads it in an error, cut to a line (never the repr of a huge or
    deeply nested value)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
    return _REPR.repr(value)


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
        return key, f"must be one of {ctx.get('expected', '')} (got {shown(got)})"
    if typ in ("greater_than_equal", "greater_than", "less_than", "less_than_equal"):
        return key, f"{err['msg'].lower()} (got {shown(got)})"
    if typ.endswith("_parsing") or typ.endswith("_type") or typ == "finite_number":
        return key, f"{err['msg'].lower()} (got {shown(got)})"
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


class YamlSyntaxError(LoradeckError):
    """Text that is not YAML at all (as opposed to YAML that is refused)."""

    default_kind = ErrorKind.CONFIG


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader; an integer too long for Python's int() keeps its size."""

    def construct_yaml_int(self, node: yaml.Node) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # over sys.get_int_max_str_digits(): out of any range we allow
            digits = sum(c.isdigit() for c in str(node.value))
            return (-1 if str(node.value).lstrip().startswith("-") else 1) * 10 ** min(
                digits - 1, 20_000)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(node: yaml.Node, where: str) -> None:
    """Refuse a document that its aliases expand past MAX_YAML_VALUES values, nest deeper
    than MAX_YAML_DEPTH, or that refers to itself (counted without expanding anything)."""
    size: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) once expanded
    visiting: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        current, ready = stack.pop()
        key = id(current)
        if ready:
            kids = [size[id(k)] for k in _children(current)]
            size[key] = (1 + sum(k[0] for k in kids), 1 + max((k[1] for k in kids), default=0))
            visiting.discard(key)
            if size[key][0] > MAX_YAML_VALUES or size[key][1] > MAX_YAML_DEPTH:
                break
            continue
        if key in size:
            continue
        if key in visiting:
            raise LoradeckError("an alias refers to the value that holds it", kind="config",
                                where=where, hint="write the value out instead of the alias")
        visiting.add(key)
        stack.append((current, True))
        stack.extend((k, False) for k in _children(current) if id(k) not in size)
    values, depth = max(size.values(), default=(0, 0))
    if values > MAX_YAML_VALUES:
        raise LoradeckError(f"the YAML expands to more than {MAX_YAML_VALUES:,} values through "
                            "its anchors and aliases", kind="config", where=where,
                            hint="write the values out; a config needs no alias bombs")
    if depth > MAX_YAML_DEPTH:
        raise LoradeckError(f"the YAML nests deeper than {MAX_YAML_DEPTH} levels", kind="config",
                            where=where, hint="a config needs a few levels: section, key, value")


def safe_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` that refuses alias bombs, deep nesting and self-reference in one line
    (LoradeckError), and turns a syntax error into one line at its line number."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where)
        return loader.construct_document(node)
    except RecursionError:
        raise LoradeckError(f"the YAML nests deeper than {MAX_YAML_DEPTH} levels",
                            kind="config", where=where, hint="a config needs a few levels: "
                            "section, key, value") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark else where
        raise YamlSyntaxError(f"not valid YAML: {getattr(exc, 'problem', None) or exc}",
                              where=at, hint="fix the YAML syntax at that line") from None
    finally:
        loader.dispose()


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``KEY=VALUE`` overrides, validate."""
    p = Path(path)
    if not p.is_file():
        raise LoradeckError("config file not found", kind="config", where=str(p),
                            hint="create one with: loradeck init")
    return load_text(p.read_text(encoding="utf-8", errors="replace"), str(p), overrides)


def load_text(text: str, source: str, overrides: list[str] | None = None) -> Config:
    """A config from YAML text read from ``source``, with ``KEY=VALUE`` overrides."""
    data = safe_yaml(text, source) or {}
    for item in overrides or []:
        apply_override(data, item)
    return validate(data, source=source)


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
            return safe_yaml(text, "--set")
        except YamlSyntaxError:
            return raw
    try:
        value = safe_yaml(text, "--set")
    except YamlSyntaxError:
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
    """Write the config as YAML (no comments), whole or not at all; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(config.to_yaml(), encoding="utf-8")
    os.replace(tmp, p)
    return p


DEMO_VALUES: dict[str, Any] = {
    # demo:tiny learns its rows in 300 steps at 2e-3 (about 10 s on a CPU core)
    "model.quantization": "none", "training.max_steps": 300, "training.batch_size": 4,
    "training.grad_accum": 1, "training.learning_rate": 2.0e-3, "training.max_length": 256,
    "training.logging_steps": 5, "training.eval_steps": 25, "training.save_steps": 50,
}
COMMENT_COLUMN = 27


def field_of(key: str) -> Any:
    """The pydantic FieldInfo of a dotted config key (``lora.r``); KeyError when unknown."""
    section, name = key.split(".", 1)
    return Config.model_fields[section].annotation.model_fields[name]  # type: ignore[union-attr]


def choices_of(key: str) -> tuple[str, ...]:
    """The allowed values of a key whose type is a set of words (Literal), else ()."""
    from typing import get_args, get_origin

    found: list[str] = []
    pending = [field_of(key).annotation]
    while pending:
        typ = pending.pop(0)
        if get_origin(typ) is Literal:
            found += [str(a) for a in get_args(typ)]
        else:
            pending += list(get_args(typ))
    return tuple(found)


def help_of(key: str) -> str:
    """The one line that describes a key: its choices, then its description."""
    choices = choices_of(key)
    desc = field_of(key).description or ""
    return f"{' | '.join(choices)}: {desc}" if choices and key != "training.num_processes" \
        else desc


def keys() -> list[str]:
    """Every dotted key, in the order of the sections and their fields."""
    return [f"{s}.{n}" for s in SECTIONS
            for n in Config.model_fields[s].annotation.model_fields]  # type: ignore[union-attr]


def _scalar(section: type[BaseModel], name: str, value: Any) -> str:
    """A value as YAML, unquoted when the plain word reads back as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    if isinstance(value, str) and text != value:
        try:
            if section.model_validate({name: yaml.safe_load(value)}).__dict__[name] == value:
                return value
        except (ValidationError, yaml.YAMLError):
            pass
    return text


def starter_text(demo: bool = False) -> str:
    """The commented starter config written by ``loradeck init``: every key with its value and
    its description (generated from the config fields)."""
    config = demo_config() if demo else Config()
    lines = ["# loradeck run config. Every key has a default; run `loradeck train THIS_FILE`.",
             "# Override any key on the command line: --set training.max_steps=100", ""]
    for section in SECTIONS:
        lines.append(f"{section}:")
        values = getattr(config, section)
        for name in type(values).model_fields:
            key = name if yaml.safe_load(name) == name else f"'{name}'"  # 'on' stays a word
            entry = f"  {key}: {_scalar(type(values), name, getattr(values, name))}"
            comment = help_of(f"{section}.{name}")
            lines.append(f"{entry.ljust(COMMENT_COLUMN - 1)} # {comment}" if comment else entry)
        lines.append("")
    return "\n".join(lines)


def demo_config() -> Config:
    """The config ``loradeck --demo`` and ``init --demo`` start from."""
    data: dict[str, Any] = {}
    for key, value in DEMO_VALUES.items():
        section, name = key.split(".", 1)
        data.setdefault(section, {})[name] = value
    return validate(data, source="demo")
