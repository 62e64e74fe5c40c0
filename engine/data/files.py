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

import csv
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradeck.engine.errors import LoradeckError

SHAPES = ("instruction", "messages", "prompt-completion", "text")
FORMATS = ("auto", *SHAPES)
ROLES = ("instruction", "context", "response", "messages", "prompt", "completion", "text", "system",
         "tools")
EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet", ".txt")

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

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
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


def is_hub_id(path: str) -> bool:
    """True for ``org/name`` that is not an existing path nor a file name we read."""
    p = Path(path).expanduser()
    return (not p.exists() and p.suffix.lower() not in EXTENSIONS and bool(_HUB_ID.match(path)))


def source_kind(path: str) -> str:
    """``demo``, ``file`` or ``hub``; raises for a missing file or an unreadable name."""
    if path.strip().lower() == "demo":
        return "demo"
    p = Path(path).expanduser()
    if p.is_file():
        return "file"
    if p.is_dir():
        raise LoradeckError("is a folder, not a dataset file", kind="data", where=path,
                            hint=f"point dataset.path to a {', '.join(EXTENSIONS)} file inside it")
    if is_hub_id(path):
        return "hub"
    raise LoradeckError("dataset file not found", kind="data", where=path,
                        hint="check the path, or give a Hub dataset id (org/name) or demo")


def read_table(path: str, split: str = "train") -> Table:
    """Read every row of a dataset file, the demo set or a Hub dataset."""
    kind = source_kind(path)
    if kind == "demo":
        from loradeck.engine.data import demo_rows as demo_data

        rows = [dict(r) for r in demo_data.ROWS]
        return Table("demo", rows, [f"demo row {i + 1}" for i in range(len(rows))],
                     _columns_of(rows))
    if kind == "hub":
        return _read_hub(path, split)
    p = Path(path).expanduser()
    ext = p.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
               ".parquet": _read_parquet, ".txt": _read_txt}
    if ext not in readers:
        raise LoradeckError(f"unsupported file type {ext or '(no extension)'!r}", kind="data",
                            where=path, hint=f"use one of {', '.join(EXTENSIONS)}")
    table = readers[ext](p, path)
    if not table.rows:
        raise LoradeckError("no rows in the file", kind="data", where=path,
                            hint="add examples, or point dataset.path to another file")
    return table


def _columns_of(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(str(key), None)
    return list(seen)


def _read_text(p: Path, label: str) -> str:
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LoradeckError("not UTF-8 text", kind="data", where=f"{label}:{line}",
                            hint="save the file as UTF-8 (e.g. iconv -f cp949 -t utf-8)") from None
    if not text.strip():
        raise LoradeckError("the file is empty", kind="data", where=label,
                            hint="add examples, or point dataset.path to another file")
    return text


def too_deep(where: str) -> LoradeckError:
    return LoradeckError("the JSON nests too deeply to read (brackets inside brackets, "
                         "hundreds of levels)", kind="data", where=where,
                         hint="fix or remove that row; a training row needs a few levels")


def _object_row(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise LoradeckError(f"expected a JSON object per row, got {type(obj).__name__}",
                            kind="data", where=where,
                            hint='write each row as {"column": value, ...}')
    return obj


def _read_jsonl(p: Path, label: str) -> Table:
    text = _read_text(p, label)
    rows, wheres = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoradeckError(f"malformed JSON line: {exc.msg} (column {exc.colno})",
                                kind="data", where=where,
                                hint="fix or remove that line; each line must be one JSON object"
                                ) from None
        except RecursionError:
            raise too_deep(where) from None
        rows.append(_object_row(obj, where))
        wheres.append(where)
    return Table(label, rows, wheres, _columns_of(rows))


def _read_json(p: Path, label: str) -> Table:
    text = _read_text(p, label)
    try:
        data = json.loads(text)
    except RecursionError:
        raise too_deep(label) from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line in a .json file: read it as JSONL
            try:
                return _read_jsonl(p, label)
            except LoradeckError:
                pass
        raise LoradeckError(f"not valid JSON: {exc.msg} (column {exc.colno})", kind="data",
                            where=f"{label}:{exc.lineno}",
                            hint='a .json file holds a list of objects or {"data": [...]}'
                            ) from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if isinstance(data.get("data"), list):
            data = data["data"]
        elif len(lists) == 1:
            data = lists[0]
        else:
            raise LoradeckError('expected a list of objects or {"data": [...]}', kind="data",
                                where=label, hint="put the rows in a list under \"data\"")
    if not isinstance(data, list):
        raise LoradeckError('expected a list of objects or {"data": [...]}', kind="data",
                            where=label)
    wheres = [f"{label} row {i + 1}" for i in range(len(data))]
    rows = [_object_row(obj, w) for obj, w in zip(data, wheres, strict=True)]
    return Table(label, rows, wheres, _columns_of(rows))


def _read_csv(p: Path, label: str) -> Table:
    text = _read_text(p, label)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    import io

    reader = csv.DictReader(io.StringIO(text, newline=""), restkey="\0extra")
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise LoradeckError(f"not valid CSV: {exc}", kind="data",
                            where=f"{label}:{reader.line_num}") from None
    wheres = [f"{label} row {i + 1}" for i in range(len(rows))]
    for row, where in zip(rows, wheres, strict=True):
        if "\0extra" in row:
            raise LoradeckError("more values than the header has columns", kind="data",
                                where=where, hint="quote values that contain commas")
    columns = [c for c in (reader.fieldnames or []) if c is not None]
    return Table(label, rows, wheres, columns)


def _read_parquet(p: Path, label: str) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if p.stat().st_size == 0:
        raise LoradeckError("the file is empty", kind="data", where=label,
                            hint="add examples, or point dataset.path to another file")
    try:
        table = pq.read_table(p)
    except (pa.ArrowException, OSError) as exc:
        raise LoradeckError(f"not a readable Parquet file: {exc}", kind="data",
                            where=label) from None
    rows = table.to_pylist()
    return Table(label, rows, [f"{label} row {i + 1}" for i in range(len(rows))],
                 list(table.column_names))


def _read_txt(p: Path, label: str) -> Table:
    """Plain text: one example per paragraph when blank lines separate them, else per line."""
    text = _read_text(p, label)
    lines = text.splitlines()
    rows, wheres = [], []
    if re.search(r"\n[ \t]*\n", text.strip()):
        start, buf = 0, []
        for number, line in enumerate([*lines, ""], start=1):
            if line.strip():
                if not buf:
                    start = number
                buf.append(line)
            elif buf:
                rows.append({"text": "\n".join(buf).strip()})
                wheres.append(f"{label}:{start}")
                buf = []
    else:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                rows.append({"text": line.strip()})
                wheres.append(f"{label}:{number}")
    return Table(label, rows, wheres, ["text"])


def _read_hub(name: str, split: str) -> Table:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except ConnectionError as exc:
        raise LoradeckError(f"cannot reach the Hub to load this dataset ({exc})", kind="network",
                            where=name,
                            hint="connect to the network (unset HF_HUB_OFFLINE), or download "
                                 "the rows and point dataset.path to a local file") from None
    except datasets.exceptions.DatasetNotFoundError:
        raise LoradeckError("dataset not found on the Hub", kind="data", where=name,
                            hint="check the id (org/name); for a private or gated set, log in "
                                 "with `hf auth login`") from None
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise LoradeckError(f"split {split!r} not found: {exc}", kind="data", where=name,
                                hint="set dataset.split to one the dataset has") from None
        raise LoradeckError(f"cannot load this dataset: {exc}", kind="data", where=name) from None
    except FileNotFoundError as exc:
        raise LoradeckError(f"cannot load this dataset: {exc}", kind="data", where=name,
                            hint="check the id and dataset.split") from None
    rows = ds.to_list()
    if not rows:
        raise LoradeckError(f"split {split!r} has no rows", kind="data", where=name)
    return Table(name, rows, [f"{name} row {i + 1}" for i in range(len(rows))],
                 list(ds.column_names))


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


def _normalize_all(table: Table, shape: str, mapping: dict[str, str], stop_at: int
                   ) -> tuple[list[dict[str, Any] | None], list[LoradeckError]]:
    """Normalize rows in order (None for a bad row), stopping after ``stop_at`` errors."""
    examples: list[dict[str, Any] | None] = []
    errors: list[LoradeckError] = []
    for row, where in zip(table.rows, table.wheres, strict=True):
        try:
            examples.append(normalize_row(row, shape, mapping, where))
        except LoradeckError as exc:
            examples.append(None)
            errors.append(exc)
            if len(errors) >= stop_at:
                break
    return examples, errors


def load(path: str, *, split: str = "train", format: str = "auto",
         columns: dict[str, str] | None = None, max_rows: int | None = None) -> Loaded:
    """Read, detect and normalize a dataset; raise the first problem as a LoradeckError."""
    table = read_table(path, split)
    total = len(table.rows)
    if max_rows is not None:
        table = Table(table.source, table.rows[:max_rows], table.wheres[:max_rows], table.columns)
    shape, mapping = detect(table.columns, table.rows[0], format, columns, table.source)
    examples, errors = _normalize_all(table, shape, mapping, stop_at=1)
    if errors:
        raise errors[0]
    return Loaded(table.source, shape, mapping, table.columns, total,
                  [e for e in examples if e is not None], list(table.wheres))


def load_section(section: Any) -> Loaded:
    """``load`` with the keys of a config's ``dataset`` section."""
    return load(section.path, split=section.split, format=section.format,
                columns=section.columns, max_rows=section.max_rows)


def preview(path: str, columns: dict[str, str] | None = None, format: str = "auto",
            limit: int = 20, split: str = "train") -> Inspection:
    """Everything the Data screen shows; errors are collected as lines, never raised."""
    result = Inspection(file=path)
    try:
        result.kind = source_kind(path)
        table = read_table(path, split)
    except LoradeckError as exc:
        result.errors.append(exc.line())
        result.error_kind = exc.kind
        return result
    except Exception as exc:  # a Hub loader failing in a way we do not know: still one line
        result.errors.append(f"{path}: cannot read the dataset: {exc}")
        result.error_kind = "data"
        return result
    result.file = table.source
    result.found_columns = list(table.columns)
    result.total_rows = len(table.rows)
    result.rows = table.rows[:limit]
    try:
        shape, mapping = detect(table.columns, table.rows[0], format, columns, table.source)
    except LoradeckError as exc:
        result.errors.append(exc.line())
        result.error_kind = exc.kind
        return result
    result.format, result.columns = shape, mapping
    examples, errors = _normalize_all(table, shape, mapping, stop_at=MAX_ROW_ERRORS)
    result.examples = [e for e in examples[:limit] if e is not None]
    result.errors.extend(e.line() for e in errors)
    if errors:
        result.error_kind = errors[0].kind
    return result
