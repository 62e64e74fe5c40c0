"""Dataset files: read local files, the demo set and Hub datasets; detect the shape; validate rows.

Light module (the app imports it): ``datasets`` and ``pyarrow`` are imported only inside the
functions that read Hub datasets and Parquet files.

Every problem a person can fix raises ``LoradeckError(kind="data")`` whose ``where`` names the
file and the line (``file:LINE``, JSONL and TXT) or the row (``file row N``, 1-based).
Rows become normalized examples:

- ``{"messages": [{"role", "content"}, ...]}`` ending on an assistant turn (instruction rows and
  chat rows; a user message made from an instruction row also keeps ``instruction`` and
  ``context`` so the alpaca template can print its ``### Input:`` block),
- ``{"prompt": str, "completion": str}`` (text used as is, no chat template),
- ``{"text": str}`` (plain text).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any

from loradeck.engine.data import readers
from loradeck.engine.data.readers import source_kind
from loradeck.engine.enums import DataRole, DatasetFormat, values
from loradeck.engine.errors import LoradeckError

FORMATS = values(DatasetFormat)
SHAPES = FORMATS[1:]
ROLES = values(DataRole)

# Column names each role is detected under, in order of preference.
ALIASES: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction", "question", "prompt"),
    "context": ("context", "input"),
    "response": ("response", "output", "answer", "completion"),
    "messages": ("messages", "conversations", "conversation"),
    "prompt": ("prompt",),
    "completion": ("completion",),
    "text": ("text",),
    "system": ("system", "system_prompt"),
    "tools": ("tools",),
}

# shape -> (required roles, optional roles)
SHAPE_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "instruction": (("instruction", "response"), ("context", "system")),
    "messages": (("messages",), ("system", "tools")),
    "prompt-completion": (("prompt", "completion"), ()),
    "text": (("text",), ()),
}

# ShareGPT (from/value) and other speaker names -> chat roles.
CHAT_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
              "bot": "assistant", "model": "assistant", "chatgpt": "assistant",
              "system": "system", "tool": "tool", "observation": "tool", "ipython": "tool",
              "function_response": "tool", "function_call": "tool_call",
              "tool_call": "tool_call", "tool_calls": "tool_call"}
"""Speaker names as the chat template's roles; ``tool_call`` turns become the assistant's
calls (``tool_calls``) and ``observation`` turns the tool's answers."""
TEXT_PART_KEYS = ("text", "value")

_COLUMNS_HINT = "map your columns with dataset.columns, e.g. {instruction: question, response: answer}"
MAX_ROW_ERRORS = 10


@dataclass
class Table:
    """Raw rows as read, with where each one came from."""

    source: str
    rows: list[dict[str, Any]]
    wheres: list[str]
    columns: list[str]


@dataclass
class Loaded:
    """A validated dataset: its shape, column mapping and normalized examples."""

    source: str
    format: str
    columns: dict[str, str]
    found_columns: list[str]
    total_rows: int
    examples: list[dict[str, Any]]
    wheres: list[str] = field(default_factory=list)  # where each example came from


@dataclass
class Inspection:
    """What the Data screen shows about a dataset; never raises, problems go to ``errors``."""

    file: str
    kind: str = "file"                      # file | demo | hub
    format: str | None = None               # detected or forced shape
    columns: dict[str, str] = field(default_factory=dict)   # role -> column
    found_columns: list[str] = field(default_factory=list)
    total_rows: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)      # first raw rows
    examples: list[dict[str, Any]] = field(default_factory=list)  # the same rows, normalized
    errors: list[str] = field(default_factory=list)               # one line each
    error_kind: str | None = None           # kind of the first error (data, network, ...)

    @property
    def ok(self) -> bool:
        return not self.errors

    def table(self, width: int = 60) -> tuple[list[str], list[list[str]]]:
        """Header and cells of the first rows, each cell one line of at most ``width`` chars."""
        headers = list(self.found_columns)
        cells = [[_cell(row.get(h), width) for h in headers] for row in self.rows]
        return headers, cells


def _cell(value: Any, width: int) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------- sources

DETECT_ROWS = 1000  # rows whose columns decide the shape of a stream


def read_table(path: str, split: str = "train") -> Table:
    """Read every row of a dataset file, the demo set or a Hub dataset (small data: previews
    and tests; training streams, see ``stream``)."""
    stream = readers.open_rows(path, split)
    rows, wheres = [], []
    for row, where in stream.rows:
        rows.append(row)
        wheres.append(where)
    if not rows:
        raise _no_rows(stream.source)
    return Table(stream.source, rows, wheres, stream.columns or _columns_of(rows))


def _no_rows(source: str) -> LoradeckError:
    return LoradeckError("no rows in the file", kind="data", where=source,
                         hint="add examples, or point dataset.path to another file")


def _columns_of(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(str(key), None)
    return list(seen)


# ---------------------------------------------------------------- shape detection


def detect(found: list[str], first: dict[str, Any] | None = None, format: str = "auto",
           columns: dict[str, str] | None = None, source: str = "dataset"
           ) -> tuple[str, dict[str, str]]:
    """Pick the shape and the role -> column mapping; ``columns`` and ``format`` override."""
    overrides = dict(columns or {})
    found_list = ", ".join(found) or "(none)"
    unknown_roles = sorted(set(overrides) - set(ROLES))
    if unknown_roles:
        raise LoradeckError(f"dataset.columns: unknown role {unknown_roles[0]!r}", kind="config",
                            hint=f"roles are {', '.join(ROLES)}")
    absent = [f"{role}: {col}" for role, col in overrides.items() if col not in found]
    if absent:
        raise LoradeckError(f"dataset.columns names missing column(s) {', '.join(absent)}; "
                            f"columns found: {found_list}", kind="data", where=source,
                            hint="fix dataset.columns to name columns the data has")
    if format not in FORMATS:
        raise LoradeckError(f"dataset.format: unknown format {format!r}", kind="config",
                            hint=f"use one of {', '.join(FORMATS)}")
    taken = set(overrides.values())

    def pick(role: str) -> str | None:
        if role in overrides:
            return overrides[role]
        for name in ALIASES[role]:
            if name in found and name not in taken:
                return name
        return None

    shape = format
    if shape == "auto":
        shape = _auto_shape(overrides, pick, first)
    if shape is None:
        raise LoradeckError(f"unknown dataset shape; columns found: {found_list}", kind="data",
                            where=source,
                            hint="expected instruction/response (dolly, alpaca), messages or "
                                 "conversations, prompt/completion, or text; " + _COLUMNS_HINT)
    required, optional = SHAPE_ROLES[shape]
    mapping: dict[str, str] = {}
    for role in (*required, *optional):
        col = pick(role)
        if col is not None and col not in mapping.values():
            mapping[role] = col
    missing = [r for r in required if r not in mapping]
    if missing:
        looked = "; ".join(f"{r}: {' or '.join(ALIASES[r])}" for r in missing)
        example = ", ".join(f"{r}: <column>" for r in missing)
        raise LoradeckError(f"missing column(s) for the {shape} shape ({looked}); "
                            f"columns found: {found_list}", kind="data", where=source,
                            hint=f"name them in dataset.columns, e.g. {{{example}}}")
    return shape, mapping


def _auto_shape(overrides: dict[str, str], pick, first: dict[str, Any] | None) -> str | None:
    if "messages" in overrides:
        return "messages"
    if {"prompt", "completion"} & set(overrides):
        return "prompt-completion"
    if {"instruction", "response", "context"} & set(overrides):
        return "instruction"
    if "text" in overrides:
        return "text"
    col = pick("messages")
    if col is not None and (first is None or isinstance(_maybe_json(first.get(col)), list)):
        return "messages"
    if pick("prompt") and pick("completion"):
        return "prompt-completion"
    if pick("instruction") or pick("response"):
        return "instruction"
    if pick("text"):
        return "text"
    return None


# ---------------------------------------------------------------- normalization


def _maybe_json(value: Any) -> Any:
    """A JSON list or object stored as a string (CSV cells, ShareGPT tool calls) becomes the
    list or object."""
    if isinstance(value, str) and value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value
    return value


def _text(value: Any, where: str | None = None) -> str:
    """A cell or a message's content as text. Content parts (``[{"type": "text", "text":
    ...}]``, or ``value`` in place of ``text``) are joined; a part that is not text (an image,
    audio) is refused, since only text is trained."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return ""
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict):
                texts.append(str(part))
                continue
            kind = str(part.get("type") or "text")
            if kind != "text":
                raise LoradeckError(f"a {kind} part in a message: only text is trained",
                                    kind="data", where=where,
                                    hint="drop the non-text parts, or the row")
            texts.append(_text(next((part[k] for k in TEXT_PART_KEYS if k in part), "")))
        return "".join(texts)
    return value if isinstance(value, str) else str(value)


def _required(row: dict[str, Any], mapping: dict[str, str], role: str, where: str) -> str:
    col = mapping[role]
    value = _text(row.get(col))
    if not value.strip():
        raise LoradeckError(f"empty {role} (column {col!r})", kind="data", where=where,
                            hint="fill it in or remove the row")
    return value


def normalize_row(row: dict[str, Any], shape: str, mapping: dict[str, str],
                  where: str) -> dict[str, Any]:
    """One raw row -> a normalized example (see the module docstring)."""
    system = _text(row.get(mapping["system"])) if "system" in mapping else ""
    if shape == "instruction":
        instruction = _required(row, mapping, "instruction", where)
        response = _required(row, mapping, "response", where)
        context = _text(row.get(mapping["context"])) if "context" in mapping else ""
        user = instruction if not context.strip() else f"{instruction}\n\n{context}"
        messages = [{"role": "user", "content": user, "instruction": instruction,
                     "context": context}, {"role": "assistant", "content": response}]
        if system.strip():
            messages.insert(0, {"role": "system", "content": system})
        return {"messages": messages}
    if shape == "messages":
        example: dict[str, Any] = {"messages": _chat(row.get(mapping["messages"]),
                                                     mapping["messages"], system, where)}
        tools = _tools(row.get(mapping["tools"]), where) if "tools" in mapping else None
        if tools:
            example["tools"] = tools
        return example
    if shape == "prompt-completion":
        prompt, completion = row.get(mapping["prompt"]), row.get(mapping["completion"])
        if isinstance(_maybe_json(prompt), list):  # conversational prompt/completion
            turns = _maybe_json(prompt) + (_maybe_json(completion) or [])
            return {"messages": _chat(turns, mapping["prompt"], system, where)}
        return {"prompt": _required(row, mapping, "prompt", where),
                "completion": _required(row, mapping, "completion", where)}
    if shape == "text":
        return {"text": _required(row, mapping, "text", where)}
    raise LoradeckError(f"unknown dataset format {shape!r}", kind="config")


def _chat(value: Any, column: str, system: str, where: str) -> list[dict[str, str]]:
    value = _maybe_json(value)
    if not isinstance(value, list) or not value:
        raise LoradeckError(f"column {column!r} must hold a non-empty list of messages",
                            kind="data", where=where,
                            hint='e.g. [{"role": "user", "content": "..."}, '
                                 '{"role": "assistant", "content": "..."}]')
    messages: list[dict[str, Any]] = []
    for k, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise LoradeckError(f"message {k} is not an object", kind="data", where=where)
        speaker = item.get("role", item.get("from"))
        role = CHAT_ROLES.get(str(speaker).strip().lower()) if speaker is not None else None
        if role is None:
            raise LoradeckError(f"message {k} has unknown role {speaker!r}", kind="data",
                                where=where, hint="roles are user, assistant, system, tool "
                                                  "(or human, gpt, function_call, observation)")
        content = _text(item.get("content", item.get("value")), where)
        if role == "tool_call":  # ShareGPT: the assistant's call, as JSON text
            call = _tool_call(content, k, where)
            if messages and messages[-1]["role"] == "assistant":  # the reply's calls
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            continue
        calls = item.get("tool_calls") if role == "assistant" else None
        if calls:
            message: dict[str, Any] = {"role": role, "content": content,
                                       "tool_calls": [_tool_call(c, k, where) for c in calls]}
        elif not content.strip():
            raise LoradeckError(f"message {k} ({role}) is empty", kind="data", where=where,
                                hint="fill it in or remove the row")
        else:
            message = {"role": role, "content": content}
        if role == "tool" and item.get("name"):
            message["name"] = str(item["name"])
        messages.append(message)
    _check_order(messages, where)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last < 0:
        raise LoradeckError("no assistant message to learn from", kind="data", where=where,
                            hint="each conversation needs at least one assistant reply")
    messages = messages[: last + 1]
    if system.strip() and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _tool_call(value: Any, k: int, where: str) -> dict[str, Any]:
    """One tool call in the chat templates' form: {"type": "function", "function": {"name",
    "arguments"}} (from that form, from {"name", "arguments"}, or from JSON text of either)."""
    call = _maybe_json(value)
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        call = call["function"]
    if not isinstance(call, dict) or not call.get("name"):
        raise LoradeckError(f"message {k} is a tool call without a name", kind="data",
                            where=where, hint='write it as {"name": "...", "arguments": {...}}')
    arguments = _maybe_json(call.get("arguments", call.get("parameters", {})))
    return {"type": "function", "function": {"name": str(call["name"]),
                                             "arguments": arguments if arguments else {}}}


def _tools(value: Any, where: str) -> list[dict[str, Any]] | None:
    """The row's tool schemas (a JSON list, or its text), as the chat template takes them."""
    tools = _maybe_json(value)
    if tools in (None, "", []):
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise LoradeckError("the tools column must hold a list of JSON schemas", kind="data",
                            where=where, hint='e.g. [{"type": "function", "function": {...}}]')
    return [t if "function" in t or "type" in t else {"type": "function", "function": t}
            for t in tools]


def _check_order(messages: list[dict[str, Any]], where: str) -> None:
    """Refuse turns no chat template renders as trained: a system message after the first
    turn, an assistant turn before any user turn, two assistant turns in a row."""
    previous = None
    for k, m in enumerate(messages, start=1):
        role = m["role"]
        if role == "system" and k > 1:
            raise LoradeckError(f"message {k} (system) comes after the first turn", kind="data",
                                where=where, hint="put the system message first, or drop it")
        if role == "assistant" and previous in (None, "system"):
            raise LoradeckError(f"message {k} (assistant) comes before any user turn",
                                kind="data", where=where,
                                hint="start the conversation with a user message")
        if role == "assistant" and previous == "assistant":
            raise LoradeckError(f"message {k} (assistant) follows another assistant turn",
                                kind="data", where=where,
                                hint="merge the two replies, or put a user turn between them")
        previous = role


# ---------------------------------------------------------------- entry points


def _normalize_all(rows: Iterator[tuple[dict[str, Any], str]], shape: str,
                   mapping: dict[str, str], stop_at: int
                   ) -> tuple[list[dict[str, Any] | None], list[LoradeckError]]:
    """Normalize rows in order (None for a bad row), stopping after ``stop_at`` errors."""
    examples: list[dict[str, Any] | None] = []
    errors: list[LoradeckError] = []
    for row, where in rows:
        try:
            examples.append(normalize_row(row, shape, mapping, where))
        except LoradeckError as exc:
            examples.append(None)
            errors.append(exc)
            if len(errors) >= stop_at:
                break
    return examples, errors


@dataclass
class Stream:
    """A dataset read as it is consumed: its shape, and its examples one at a time."""

    source: str
    format: str
    columns: dict[str, str]
    found_columns: list[str]
    examples: Iterator[tuple[dict[str, Any], str]]  # (normalized example, where)
    size: int = 0                                   # bytes of the source (0: unknown)
    read: Callable[[], int] = lambda: 0             # bytes read so far
    counted: list[int] = field(default_factory=lambda: [0])  # rows read, max_rows or not

    @property
    def total_rows(self) -> int:
        return self.counted[0]


def stream(path: str, *, split: str = "train", format: str = "auto",
           columns: dict[str, str] | None = None, max_rows: int | None = None) -> Stream:
    """Open a dataset as a stream: the shape is detected from the first rows, then each row is
    normalized as it is read (a bad row raises, naming it). Past ``max_rows`` the rest are
    only counted."""
    rows = readers.open_rows(path, split)
    head = list(islice(rows.rows, DETECT_ROWS))
    if not head:
        raise _no_rows(rows.source)
    found = rows.columns or _columns_of([row for row, _ in head])
    shape, mapping = detect(found, head[0][0], format, columns, rows.source)
    counted = [0]

    def examples() -> Iterator[tuple[dict[str, Any], str]]:
        for row, where in chain(head, rows.rows):
            counted[0] += 1
            if max_rows is None or counted[0] <= max_rows:
                yield normalize_row(row, shape, mapping, where), where

    return Stream(rows.source, shape, mapping, found, examples(), rows.size, rows.read, counted)


def load(path: str, *, split: str = "train", format: str = "auto",
         columns: dict[str, str] | None = None, max_rows: int | None = None,
         limit: int | None = None) -> Loaded:
    """Read, detect and normalize a dataset into memory; raise the first problem as a
    LoradeckError. ``limit``: read only that many rows (a check of the head of a big file)."""
    opened = stream(path, split=split, format=format, columns=columns, max_rows=max_rows)
    pairs = list(islice(opened.examples, limit) if limit else opened.examples)
    return Loaded(opened.source, opened.format, opened.columns, opened.found_columns,
                  opened.total_rows, [e for e, _ in pairs], [w for _, w in pairs])


def stream_section(section: Any) -> Stream:
    """``stream`` with the keys of a config's ``dataset`` section."""
    return stream(section.path, split=section.split, format=section.format,
                  columns=section.columns, max_rows=section.max_rows)


def load_section(section: Any, limit: int | None = None) -> Loaded:
    """``load`` with the keys of a config's ``dataset`` section."""
    return load(section.path, split=section.split, format=section.format,
                columns=section.columns, max_rows=section.max_rows, limit=limit)


PREVIEW_CHECK_ROWS = 10_000  # rows the Data screen checks; the rest are counted


def preview(path: str, columns: dict[str, str] | None = None, format: str = "auto",
            limit: int = 20, split: str = "train") -> Inspection:
    """Everything the Data screen shows; errors are collected as lines, never raised. The
    first PREVIEW_CHECK_ROWS rows are checked, the rest counted (training checks them all)."""
    result = Inspection(file=path)
    try:
        result.kind = source_kind(path)
        rows = readers.open_rows(path, split)
        head = list(islice(rows.rows, PREVIEW_CHECK_ROWS))
        if not head:
            raise _no_rows(rows.source)
    except LoradeckError as exc:
        result.errors.append(exc.line())
        result.error_kind = exc.kind
        return result
    except Exception as exc:  # a Hub loader failing in a way we do not know: still one line
        result.errors.append(f"{path}: cannot read the dataset: {exc}")
        result.error_kind = "data"
        return result
    result.file = rows.source
    result.found_columns = rows.columns or _columns_of([row for row, _ in head])
    result.rows = [row for row, _ in head[:limit]]
    try:
        result.total_rows = len(head) + sum(1 for _ in rows.rows)
        shape, mapping = detect(result.found_columns, head[0][0], format, columns, rows.source)
    except LoradeckError as exc:
        result.total_rows = result.total_rows or len(head)
        result.errors.append(exc.line())
        result.error_kind = exc.kind
        return result
    result.format, result.columns = shape, mapping
    examples, errors = _normalize_all(iter(head), shape, mapping, stop_at=MAX_ROW_ERRORS)
    result.examples = [e for e in examples[:limit] if e is not None]
    result.errors.extend(e.line() for e in errors)
    if errors:
        result.error_kind = errors[0].kind
    return result
