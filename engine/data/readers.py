"""Dataset files read as streams of rows: a line, a CSV record or a Parquet batch at a time, so
a file of any size is read in bounded memory, with the bytes read so far for progress.

Each reader yields ``(row, where)``: the raw row (a dict) and where it came from, ``file:LINE``
(JSONL, TXT) or ``file row N`` (JSON, CSV, Parquet, demo, Hub). Problems a person can fix raise
``LoradeckError(kind="data")`` naming that place. Light module: ``pyarrow`` and ``datasets`` are
imported inside the Parquet and Hub readers.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradeck.engine.errors import LoradeckError

EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet", ".txt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
EMPTY_HINT = "add examples, or point dataset.path to another file"

Rows = Iterator[tuple[dict[str, Any], str]]


@dataclass
class RowStream:
    """The rows of one source, read as they are consumed."""

    source: str
    rows: Rows
    size: int = 0                                   # bytes in the file (0: not a file)
    read: Callable[[], int] = lambda: 0             # bytes read so far
    columns: list[str] = field(default_factory=list)  # known up front (CSV, Parquet, TXT)


class _Counter:
    def __init__(self) -> None:
        self.bytes = 0

    def __call__(self) -> int:
        return self.bytes


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


def open_rows(path: str, split: str = "train") -> RowStream:
    """The rows of a dataset file, the demo set or a Hub dataset, as a stream."""
    kind = source_kind(path)
    if kind == "demo":
        from loradeck.engine.data import demo_rows

        rows = [dict(r) for r in demo_rows.ROWS]
        return RowStream("demo", iter(zip(rows, [f"demo row {i + 1}" for i in range(len(rows))],
                                          strict=True)))
    if kind == "hub":
        return _hub(path, split)
    p = Path(path).expanduser()
    ext = p.suffix.lower()
    readers = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet,
               ".txt": _txt}
    if ext not in readers:
        raise LoradeckError(f"unsupported file type {ext or '(no extension)'!r}", kind="data",
                            where=path, hint=f"use one of {', '.join(EXTENSIONS)}")
    if p.stat().st_size == 0 or (ext != ".parquet" and _blank(p)):
        raise LoradeckError("the file is empty", kind="data", where=path, hint=EMPTY_HINT)
    return readers[ext](p, path)


def _blank(p: Path) -> bool:
    """Nothing but white space (and a BOM) in the file; reads up to its first other byte."""
    with open(p, "rb") as fh:
        first = True
        while chunk := fh.read(1 << 16):
            if first:
                chunk, first = chunk.removeprefix(codecs.BOM_UTF8), False
            if chunk.strip():
                return False
    return True


def too_deep(where: str) -> LoradeckError:
    return LoradeckError("the JSON nests too deeply to read (brackets inside brackets, "
                         "hundreds of levels)", kind="data", where=where,
                         hint="fix or remove that row; a training row needs a few levels")


def _not_utf8(where: str) -> LoradeckError:
    return LoradeckError("not UTF-8 text", kind="data", where=where,
                         hint="save the file as UTF-8 (e.g. iconv -f cp949 -t utf-8)")


def object_row(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise LoradeckError(f"expected a JSON object per row, got {type(obj).__name__}",
                            kind="data", where=where,
                            hint='write each row as {"column": value, ...}')
    return obj


def _lines(p: Path, label: str, count: _Counter) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, decoded as UTF-8 (a BOM dropped)."""
    with open(p, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            count.bytes += len(raw)
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _not_utf8(f"{label}:{number}") from None
            yield number, line


def _jsonl(p: Path, label: str) -> RowStream:
    count = _Counter()

    def rows() -> Rows:
        for number, line in _lines(p, label, count):
            if not line.strip():
                continue
            where = f"{label}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LoradeckError(f"malformed JSON line: {exc.msg} (column {exc.colno})",
                                    kind="data", where=where, hint="fix or remove that line; "
                                    "each line must be one JSON object") from None
            except RecursionError:
                raise too_deep(where) from None
            yield object_row(obj, where), where

    return RowStream(label, rows(), p.stat().st_size, count)


def _json(p: Path, label: str) -> RowStream:
    """A .json file is one value: read whole (a list of rows, or {"data": [...]})."""
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _not_utf8(f"{label}:{line}") from None
    if not text.strip():
        raise LoradeckError("the file is empty", kind="data", where=label, hint=EMPTY_HINT)
    try:
        value = json.loads(text)
    except RecursionError:
        raise too_deep(label) from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line in a .json file: read it as JSONL
            stream = _jsonl(p, label)
            try:
                first = list(_take(stream.rows, 1))
            except LoradeckError:
                first = None
            if first is not None:
                stream.rows = _chain(first, stream.rows)
                return stream
        raise LoradeckError(f"not valid JSON: {exc.msg} (column {exc.colno})", kind="data",
                            where=f"{label}:{exc.lineno}",
                            hint='a .json file holds a list of objects or {"data": [...]}'
                            ) from None
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if _one_conversation(value):
            value = [value]  # {"conversations": [turns]}: one row, not a row per turn
        elif isinstance(value.get("data"), list):
            value = value["data"]
        elif len(lists) == 1:
            value = lists[0]
        else:
            raise LoradeckError('expected a list of objects or {"data": [...]}', kind="data",
                                where=label, hint="put the rows in a list under \"data\"")
    if not isinstance(value, list):
        raise LoradeckError('expected a list of objects or {"data": [...]}', kind="data",
                            where=label)
    wheres = (f"{label} row {i + 1}" for i in range(len(value)))
    rows = ((object_row(obj, w), w) for obj, w in zip(value, wheres, strict=False))
    return RowStream(label, rows, len(data), lambda: len(data))


CONVERSATION_KEYS = ("messages", "conversations", "conversation")
TURN_KEYS = ({"role", "content"}, {"from", "value"})


def _one_conversation(value: dict[str, Any]) -> bool:
    """A top-level object holding the turns of one chat, as Axolotl's fixtures do."""
    for key in CONVERSATION_KEYS:
        turns = value.get(key)
        if isinstance(turns, list) and turns and all(
                isinstance(t, dict) and any(k <= t.keys() for k in TURN_KEYS) for t in turns):
            return True
    return False


def _take(rows: Rows, n: int) -> Rows:
    for i, item in enumerate(rows):
        yield item
        if i + 1 >= n:
            return


def _chain(first: list, rest: Rows) -> Rows:
    yield from first
    yield from rest


def _csv(p: Path, label: str) -> RowStream:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    fh = open(p, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed when read
    reader = csv.DictReader(fh, restkey="\0extra")
    try:
        columns = [c for c in (reader.fieldnames or []) if c is not None]
    except UnicodeDecodeError:
        fh.close()
        raise _not_utf8(f"{label}:1") from None
    except csv.Error as exc:
        fh.close()
        raise LoradeckError(f"not valid CSV: {exc}", kind="data", where=f"{label}:1") from None

    def rows() -> Rows:
        with fh:
            n = 0
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except UnicodeDecodeError:
                    raise _not_utf8(f"{label}:{reader.line_num + 1}") from None
                except csv.Error as exc:
                    raise LoradeckError(f"not valid CSV: {exc}", kind="data",
                                        where=f"{label}:{reader.line_num}") from None
                n += 1
                where = f"{label} row {n}"
                if "\0extra" in row:
                    raise LoradeckError("more values than the header has columns", kind="data",
                                        where=where, hint="quote values that contain commas")
                yield row, where

    return RowStream(label, rows(), p.stat().st_size, lambda: fh.buffer.tell()
                     if not fh.closed else p.stat().st_size, columns)


def _parquet(p: Path, label: str) -> RowStream:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except (pa.ArrowException, OSError) as exc:
        raise LoradeckError(f"not a readable Parquet file: {exc}", kind="data",
                            where=label) from None
    total = max(pf.metadata.num_rows, 1)
    size = p.stat().st_size
    done = _Counter()

    def rows() -> Rows:
        n = 0
        try:
            for batch in pf.iter_batches(batch_size=1024):
                done.bytes = size * (n + batch.num_rows) // total
                for row in batch.to_pylist():
                    n += 1
                    yield row, f"{label} row {n}"
        except (pa.ArrowException, OSError) as exc:
            raise LoradeckError(f"not a readable Parquet file: {exc}", kind="data",
                                where=label) from None

    return RowStream(label, rows(), size, done, list(pf.schema_arrow.names))


def _txt(p: Path, label: str) -> RowStream:
    """Plain text: one example per paragraph when blank lines separate them, else per line
    (a first pass over the lines finds which)."""
    count = _Counter()
    paragraphs, saw_text, gap = False, False, False
    for _number, line in _lines(p, label, _Counter()):
        if line.strip():
            paragraphs = paragraphs or (saw_text and gap)
            saw_text, gap = True, False
            if paragraphs:
                break
        elif saw_text:
            gap = True

    def rows() -> Rows:
        if not paragraphs:
            for number, line in _lines(p, label, count):
                if line.strip():
                    yield {"text": line.strip()}, f"{label}:{number}"
            return
        start, buf = 0, []
        for number, line in _lines(p, label, count):
            if line.strip():
                if not buf:
                    start = number
                buf.append(line.rstrip("\r\n"))
            elif buf:
                yield {"text": "\n".join(buf).strip()}, f"{label}:{start}"
                buf = []
        if buf:
            yield {"text": "\n".join(buf).strip()}, f"{label}:{start}"

    return RowStream(label, rows(), p.stat().st_size, count, ["text"])


def _hub(name: str, split: str) -> RowStream:
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
    done = _Counter()

    def rows() -> Rows:
        for i, row in enumerate(ds):  # memory-mapped Arrow: one row at a time
            done.bytes = i + 1
            yield dict(row), f"{name} row {i + 1}"

    return RowStream(name, rows(), len(ds), done, list(ds.column_names))
