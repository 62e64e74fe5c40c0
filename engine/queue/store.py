"""The queue's entries in SQLite (the standard library's sqlite3, WAL mode), under
$LORADECK_HOME: each change is one transaction, so adds at the same instant never lose an
entry and a crash never leaves the queue half-written.

Light module: the standard library only.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradeck.engine.enums import QueueState
from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs import paths

DB_NAME = "queue.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    run_id TEXT PRIMARY KEY,
    position REAL NOT NULL,
    state TEXT NOT NULL,
    sweep TEXT,
    sweep_values TEXT,
    gpus TEXT,
    added REAL NOT NULL,
    started REAL,
    ended REAL,
    eval TEXT
);
CREATE TABLE IF NOT EXISTS flags (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
WAITING = (QueueState.QUEUED,)
ACTIVE = (QueueState.STARTING, QueueState.RUNNING, QueueState.EVALUATING)
COLUMNS = "run_id, position, state, sweep, sweep_values, gpus, added, started, ended, eval"


@dataclass
class Entry:
    run_id: str
    position: float
    state: str
    sweep: str | None = None
    sweep_values: dict[str, Any] = field(default_factory=dict)
    gpus: list[str] | None = None
    added: float = 0.0
    started: float | None = None
    ended: float | None = None
    eval: dict[str, Any] | None = None  # {request: EvalRequest dict, pid: once started}

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run_id, "state": self.state, "sweep": self.sweep,
                "values": self.sweep_values, "gpus": self.gpus, "added": self.added,
                "started": self.started, "ended": self.ended,
                "eval": self.eval is not None}


def db_path() -> Path:
    return paths.home() / DB_NAME


def read_entries() -> list[Entry]:
    """The entries, in order, without making a queue where there is none (for views)."""
    return QueueStore().entries() if db_path().is_file() else []


def waiting_positions(entries: list[Entry]) -> dict[str, int]:
    """Each waiting entry's place in the line (1: next)."""
    waiting = [e.run_id for e in entries if e.state == QueueState.QUEUED]
    return {run_id: n for n, run_id in enumerate(waiting, start=1)}


class QueueStore:
    """The entries, in order; every method is one transaction."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                db.execute("PRAGMA busy_timeout=30000")
                db.execute("PRAGMA journal_mode=WAL")  # kept by the file from now on
                db.executescript(SCHEMA)  # IF NOT EXISTS: every opener may run it
                columns = {row[1] for row in db.execute("PRAGMA table_info(entries)")}
                if "eval" not in columns:  # a queue made before queue add --eval
                    db.execute("ALTER TABLE entries ADD COLUMN eval TEXT")
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise LoradeckError(f"the queue could not be opened: {exc}", kind="disk",
                                where=str(self.path)) from None

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise LoradeckError(f"the queue could not be read or written: {exc}",
                                kind="disk", where=str(self.path)) from None
        finally:
            db.close()

    @staticmethod
    def _entry(row: tuple) -> Entry:
        return Entry(row[0], row[1], row[2], row[3], json.loads(row[4] or "{}"),
                     json.loads(row[5]) if row[5] else None, row[6], row[7], row[8],
                     json.loads(row[9]) if row[9] else None)

    def entries(self) -> list[Entry]:
        with self._db() as db:
            rows = db.execute(f"SELECT {COLUMNS} FROM entries ORDER BY position").fetchall()
        return [self._entry(r) for r in rows]

    def add(self, run_ids: list[str], sweep: str | None = None,
            values: list[dict[str, Any]] | None = None,
            eval_request: dict[str, Any] | None = None) -> None:
        """Append the runs, in order, as one transaction; ``eval_request``: evaluate each
        once it is done (``loradeck eval``)."""
        evaluate = json.dumps({"request": eval_request}) if eval_request is not None else None
        with self._db() as db:
            last = db.execute("SELECT COALESCE(MAX(position), 0) FROM entries").fetchone()[0]
            for i, run_id in enumerate(run_ids, start=1):
                db.execute("INSERT INTO entries (run_id, position, state, sweep, sweep_values, "
                           "added, eval) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (run_id, last + i, str(QueueState.QUEUED), sweep,
                            json.dumps((values or [{}] * len(run_ids))[i - 1]), time.time(),
                            evaluate))

    def claim_next(self) -> Entry | None:
        """The first queued entry, marked starting (so no other runner can take it)."""
        with self._db() as db:
            row = db.execute("SELECT run_id FROM entries WHERE state = ? ORDER BY position "
                             "LIMIT 1", (str(QueueState.QUEUED),)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE entries SET state = ?, started = ? WHERE run_id = ?",
                       (str(QueueState.STARTING), time.time(), row[0]))
        return self.get(row[0])

    def get(self, run_id: str) -> Entry | None:
        with self._db() as db:
            row = db.execute(f"SELECT {COLUMNS} FROM entries WHERE run_id = ?",
                             (run_id,)).fetchone()
        return self._entry(row) if row else None

    def set_state(self, run_id: str, state: str, *, gpus: list[str] | None = None) -> None:
        ended = time.time() if state not in (*WAITING, *ACTIVE) else None
        with self._db() as db:
            db.execute("UPDATE entries SET state = ?, ended = COALESCE(?, ended), "
                       "gpus = COALESCE(?, gpus) WHERE run_id = ?",
                       (str(state), ended, json.dumps(gpus) if gpus is not None else None,
                        run_id))

    def set_eval(self, run_id: str, evaluate: dict[str, Any]) -> None:
        """The entry's evaluation as it now stands (its request, and its job's pid)."""
        with self._db() as db:
            db.execute("UPDATE entries SET eval = ? WHERE run_id = ?",
                       (json.dumps(evaluate), run_id))

    def cancel(self, run_id: str) -> Entry:
        """Take a waiting entry out of the line (its run directory stays, never started)."""
        entry = self._waiting(run_id, "remove")
        self.set_state(entry.run_id, QueueState.CANCELLED)
        return entry

    def move(self, run_id: str, position: int) -> None:
        """Put a waiting entry at ``position`` (1: next) among the waiting ones."""
        entry = self._waiting(run_id, "move")
        with self._db() as db:
            waiting = [r[0] for r in db.execute(
                "SELECT run_id FROM entries WHERE state = ? ORDER BY position",
                (str(QueueState.QUEUED),)).fetchall() if r[0] != entry.run_id]
            first = db.execute("SELECT COALESCE(MIN(position), 1) FROM entries WHERE state = ?",
                               (str(QueueState.QUEUED),)).fetchone()[0]
            waiting.insert(max(0, min(position - 1, len(waiting))), entry.run_id)
            for i, rid in enumerate(waiting):
                db.execute("UPDATE entries SET position = ? WHERE run_id = ?",
                           (first + i * 1e-3, rid))

    def _waiting(self, run_id: str, what: str) -> Entry:
        entries = self.entries()
        matches = [e for e in entries if e.run_id == run_id] or \
            [e for e in entries if e.run_id.startswith(run_id)]  # an exact id wins over prefixes
        if len(matches) != 1:
            raise LoradeckError(f"{run_id!r} is {'no' if not matches else 'more than one'} "
                                "entry of the queue", kind="usage", where="RUN",
                                hint="see them with: loradeck queue")
        if matches[0].state != QueueState.QUEUED:
            raise LoradeckError(f"{matches[0].run_id} is {matches[0].state}, not waiting: "
                                f"only a waiting entry can be {what}d", kind="usage",
                                hint="stop a running one with: loradeck stop RUN")
        return matches[0]

    def flag(self, name: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT value FROM flags WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_flag(self, name: str, value: str | None) -> None:
        with self._db() as db:
            if value is None:
                db.execute("DELETE FROM flags WHERE name = ?", (name,))
            else:
                db.execute("INSERT OR REPLACE INTO flags (name, value) VALUES (?, ?)",
                           (name, value))
