"""A dataset as loradeck uses it: read (``readers``), its shape detected (``shapes``), its rows
normalized (``rows``), as a stream for training, in memory for checks, or as the Data screen's
preview.

Light module (the app imports it): ``datasets`` and ``pyarrow`` are imported only inside the
readers of Hub datasets and Parquet files.

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
from loradeck.engine.data.rows import normalize_row
from loradeck.engine.data.shapes import FORMATS, ROLES, SHAPES, detect
from loradeck.engine.errors import LoradeckError

__all__ = ["FORMATS", "ROLES", "SHAPES", "detect", "normalize_row"]

MAX_ROW_ERRORS = 10  # row errors the Data screen lists


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
