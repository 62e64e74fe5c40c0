"""The rows of the preference and reward methods, read and checked before launch like SFT's:
pairs (``prompt``/``chosen``/``rejected``: DPO, ORPO), unpaired answers (``prompt``/
``completion``/``label``: KTO) and prompts (``prompt`` plus any columns, handed to the reward
functions: GRPO). Text or conversations (lists of messages, UltraFeedback's rows included);
each row normalized to its prompt as messages and its answers as text. A bad row is refused in
one line naming it and the column. Light module."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any

from loradeck.engine.data import readers
from loradeck.engine.data.rows import CHAT_ROLES
from loradeck.engine.data.shapes import maybe_json
from loradeck.engine.enums import TrainingMethod
from loradeck.engine.errors import LoradeckError

SHAPES = {TrainingMethod.DPO: "pairs", TrainingMethod.ORPO: "pairs",
          TrainingMethod.KTO: "unpaired", TrainingMethod.GRPO: "prompts"}
COLUMNS = {"pairs": ("prompt", "chosen", "rejected"),
           "unpaired": ("prompt", "completion", "label"),
           "prompts": ("prompt",)}
SFT_COLUMNS = ("instruction", "response", "output", "messages", "conversations", "text")
LABEL_WORDS = {"true": True, "false": False}


@dataclass
class MethodRows:
    """A dataset read for one method: its shape, its normalized rows and where each came from."""

    source: str
    shape: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    wheres: list[str] = field(default_factory=list)
    total_rows: int = 0


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _messages(value: Any, column: str, where: str) -> list[dict[str, str]]:
    """A prompt or answer as messages: text is one user turn (an answer: one assistant turn
    is made by the caller); a list is read as chat messages."""
    value = maybe_json(value)
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if value.strip() else []
    if not isinstance(value, list):
        raise LoradeckError(f"column {column!r} must hold text or a list of messages",
                            kind="data", where=where)
    out = []
    for k, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise LoradeckError(f"column {column!r}: message {k} is not an object", kind="data",
                                where=where)
        speaker = item.get("role", item.get("from"))
        role = CHAT_ROLES.get(str(speaker).strip().lower()) if speaker is not None else None
        if role not in ("user", "assistant", "system"):
            raise LoradeckError(f"column {column!r}: message {k} has role {speaker!r}",
                                kind="data", where=where, hint="roles are user, assistant and "
                                                               "system")
        out.append({"role": role, "content": _text(item.get("content", item.get("value")))})
    return out


def _answer(row: dict[str, Any], column: str, where: str
            ) -> tuple[str, list[dict[str, str]]]:
    """(the answer's text, the turns before it when the column holds a whole conversation)."""
    if column not in row or row[column] is None:
        raise LoradeckError(f"missing column {column!r}", kind="data", where=where)
    value = maybe_json(row[column])
    if isinstance(value, list):
        turns = _messages(value, column, where)
        if not turns or turns[-1]["role"] != "assistant":
            raise LoradeckError(f"column {column!r} must end with the assistant's answer",
                                kind="data", where=where)
        text, before = turns[-1]["content"], turns[:-1]
    else:
        text, before = _text(value), []
    if not text.strip():
        raise LoradeckError(f"{column!r} is empty", kind="data", where=where,
                            hint="fill it in or remove the row")
    return text, before


def _prompt(row: dict[str, Any], before: list[dict[str, str]], where: str
            ) -> list[dict[str, str]]:
    """The prompt's messages: the prompt column, else the turns before the answer."""
    prompt = _messages(row["prompt"], "prompt", where) if row.get("prompt") not in (None, "") \
        else before
    if not prompt or prompt[-1]["role"] != "user":
        raise LoradeckError("the prompt is empty or does not end with a user turn",
                            kind="data", where=where,
                            hint="give each row a prompt column (text, or messages ending "
                                 "with the user's turn)")
    return prompt


def normalize(row: dict[str, Any], shape: str, where: str) -> dict[str, Any]:
    """One raw row of ``shape`` as {prompt: messages, ...} (one line naming a bad row)."""
    if shape == "pairs":
        chosen, before = _answer(row, "chosen", where)
        rejected, _ = _answer(row, "rejected", where)
        return {"prompt": _prompt(row, before, where), "chosen": chosen, "rejected": rejected}
    if shape == "unpaired":
        completion, before = _answer(row, "completion", where)
        label = row.get("label")
        if isinstance(label, str):
            label = LABEL_WORDS.get(label.strip().lower(), label)
        if not isinstance(label, bool):
            raise LoradeckError(f"'label' must be true or false (got {label!r})", kind="data",
                                where=where, hint="label each answer true (good) or false (bad)")
        return {"prompt": _prompt(row, before, where), "completion": completion, "label": label}
    if "prompt" not in row:
        raise LoradeckError("missing column 'prompt'", kind="data", where=where)
    extra = {k: v for k, v in row.items() if k != "prompt"}
    return {**extra, "prompt": _prompt(row, [], where)}


def check_columns(found: list[str], method: str, source: str) -> str:
    """The shape ``method`` reads, after refusing data of another shape in one line."""
    shape = SHAPES[TrainingMethod(method)]
    need = [c for c in COLUMNS[shape] if c not in found and not
            (c == "prompt" and shape == "pairs")]  # pairs may carry the prompt in chosen
    if not need:
        return shape
    sft = [c for c in SFT_COLUMNS if c in found]
    what = f"rows for SFT ({', '.join(sft)})" if sft else f"columns {', '.join(found) or '(none)'}"
    raise LoradeckError(f"training.method {method} needs {', '.join(COLUMNS[shape])} in each "
                        f"row; this dataset has {what}", kind="data", where=source,
                        hint=HINTS[shape])


HINTS = {"pairs": 'rows like {"prompt": "...", "chosen": "...", "rejected": "..."}; for SFT '
                  "data set training.method sft",
         "unpaired": 'rows like {"prompt": "...", "completion": "...", "label": true}',
         "prompts": 'rows like {"prompt": "...", "answer": "..."}; other columns go to the '
                    "reward functions"}


def read(section: Any, method: str, limit: int | None = None) -> MethodRows:
    """Read and check the rows of the config's dataset for ``method`` (all of them, or the
    first ``limit``; ``dataset.max_rows`` caps what training uses)."""
    stream = readers.open_rows(section.path, section.split)
    rows: Iterator[tuple[dict[str, Any], str]] = stream.rows
    head = list(islice(rows, 1))
    if not head:
        raise LoradeckError("no rows in the file", kind="data", where=stream.source,
                            hint=readers.EMPTY_HINT)
    found = stream.columns or list(head[0][0])
    shape = check_columns(found, method, stream.source)
    out = MethodRows(stream.source, shape, found)
    for row, where in chain(head, rows):
        if limit is not None and out.total_rows >= limit:
            break  # a check of the head of a big file
        out.total_rows += 1
        if section.max_rows and len(out.rows) >= section.max_rows:
            continue
        out.rows.append(normalize(row, shape, where))
        out.wheres.append(where)
    return out


PREVIEW_ERRORS = 50


def preview(section: Any, method: str, limit: int = 20, check_rows: int = 10_000) -> Any:
    """What the Data screen shows of a method's rows (an ``Inspection``; never raises): the
    first rows, each normalized, and one line per bad row among the first ``check_rows``."""
    from loradeck.engine.data.files import Inspection

    result = Inspection(file=section.path)
    try:
        result.kind = readers.source_kind(section.path)
        stream = readers.open_rows(section.path, section.split)
        head = list(islice(stream.rows, check_rows))
        if not head:
            raise LoradeckError("no rows in the file", kind="data", where=stream.source,
                                hint=readers.EMPTY_HINT)
        result.file = stream.source
        result.found_columns = stream.columns or list(head[0][0])
        result.rows = [row for row, _ in head[:limit]]
        result.total_rows = len(head) + sum(1 for _ in stream.rows)
        shape = check_columns(result.found_columns, method, stream.source)
    except LoradeckError as exc:
        result.errors.append(exc.line())
        result.error_kind = exc.kind
        return result
    result.format = shape
    result.columns = {c: c for c in COLUMNS[shape] if c in result.found_columns}
    for k, (row, where) in enumerate(head):
        try:
            example = normalize(row, shape, where)
        except LoradeckError as exc:
            example = None
            if len(result.errors) < PREVIEW_ERRORS:
                result.errors.append(exc.line())
                result.error_kind = result.error_kind or exc.kind
        if k < limit:
            result.examples.append(example or {})  # one per row shown, a bad one empty
    return result


def readable(example: dict[str, Any]) -> str:
    """A normalized row as a person reads it: the prompt's turns, then each answer."""
    turns = "\n".join(f"{m['role']}: {m['content']}" for m in example.get("prompt") or [])
    parts = [turns]
    for key in ("chosen", "rejected", "completion"):
        if key in example:
            parts.append(f"{key}: {example[key]}")
    if "label" in example:
        parts.append(f"label: {'good' if example['label'] else 'bad'}")
    others = {k: v for k, v in example.items()
              if k not in ("prompt", "chosen", "rejected", "completion", "label")}
    parts += [f"{k}: {v}" for k, v in others.items()]
    return "\n".join(parts)
