"""The run store: run directories, their state file, liveness, checkpoints and summaries."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from loradeck.engine.errors import AmbiguousRun, LoradeckError, RunNotFound
from loradeck.engine.notify import url_store
from loradeck.engine.runs import lock as joblock
from loradeck.engine.runs import paths, run_files
from loradeck.engine.runs.events import read_events
from loradeck.engine.runs.state import fold

COMPLETE_MARKER = "loradeck-complete.json"
STOP_FILE = "stop.request"  # a stop request: the job polls for it after each step


def _slug(text: str) -> str:
    from loradeck.engine.models.from_gguf import is_gguf, model_name

    text = text.replace("demo:", "demo-").rsplit("/", 1)[-1]
    if is_gguf(text):
        text = model_name(text)  # the model's name, not its quantization and extension
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()[:40] or "run"


def process_start_time(pid: int) -> float | None:
    """When a process started (psutil's create time, seconds since the epoch, to 0.01 s), or
    None when it is gone or a zombie."""
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return round(proc.create_time(), 2)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def pid_alive(pid: int | None, start_time: float | None = None) -> bool:
    """True when ``pid`` runs and (if given) is the same process that started at ``start_time``."""
    if not pid:
        return False
    started = process_start_time(pid)
    if started is None:
        return False
    return start_time is None or abs(started - start_time) < 0.015


STATE_TYPES: dict[str, tuple[type, ...]] = {
    "pid": (int,), "start_time": (int, float), "host": (str,), "phase": (str,), "created": (int, float),
    "started": (int, float), "ended": (int, float), "model": (str,), "dataset": (str,),
}


def read_state(path: Path) -> tuple[dict[str, Any], bool]:
    """(state, readable): a state.json of the wrong shape or types reads as ({}, False)."""
    try:
        data = json.loads(run_files.read_bytes(path))
    except FileNotFoundError:
        return {}, True
    except (OSError, ValueError, RecursionError, run_files.UnsafeRunFile):
        return {}, False  # unreadable, binary, not JSON, a link or a pipe
    if not isinstance(data, dict):
        return {}, False
    for key, types in STATE_TYPES.items():
        value = data.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            return {}, False
    return data, True


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    run_files.write_text(tmp, json.dumps(data, indent=2, ensure_ascii=False))
    os.replace(tmp, path)


@dataclass
class Run:
    """One run directory under the store."""

    dir: Path

    @property
    def id(self) -> str:
        return self.dir.name

    @property
    def config_path(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def events_path(self) -> Path:
        return self.dir / "events.jsonl"

    @property
    def log_path(self) -> Path:
        return self.dir / "train.log"

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    @property
    def stop_path(self) -> Path:
        return self.dir / STOP_FILE

    @property
    def checkpoints_dir(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        return self.dir / "adapter"

    @property
    def merged_dir(self) -> Path:
        return self.dir / "merged"

    def config(self):
        from loradeck.engine import config as cfg

        return cfg.load_text(run_files.read_text(self.config_path), str(self.config_path))

    def state(self) -> dict[str, Any]:
        """state.json as a dict; empty when missing or unreadable (see ``state_readable``)."""
        return read_state(self.state_path)[0]

    def state_readable(self) -> bool:
        """False when state.json exists but is not a state of the documented shape."""
        return read_state(self.state_path)[1]

    def update_state(self, **fields: Any) -> dict[str, Any]:
        state = self.state()
        state.update(fields)
        write_json_atomic(self.state_path, state)
        return state

    def mark_process(self, pid: int | None = None, **fields: Any) -> dict[str, Any]:
        """Record the job's pid, its start time and host in state.json."""
        pid = pid or os.getpid()
        return self.update_state(pid=pid, start_time=process_start_time(pid),
                                 host=socket.gethostname(), **fields)

    def alive(self) -> bool:
        """A job (training, merge or push) holds the run's lock now."""
        return joblock.is_held(self.dir)

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.events_path)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (a checkpoint cut off mid-write is never listed)."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for d in self.checkpoints_dir.glob("checkpoint-*"):
            m = re.fullmatch(r"checkpoint-(\d+)", d.name)
            if m and (d / COMPLETE_MARKER).is_file():
                found.append((int(m.group(1)), d))
        return [d for _, d in sorted(found)]

    def checkpoint(self, step: int) -> Path:
        """The complete checkpoint of ``step``, holding an adapter; one line listing the
        steps there are when it is missing."""
        found = {int(d.name.rsplit("-", 1)[1]): d for d in self.checkpoints()
                 if (d / "adapter_config.json").is_file()}
        if step not in found:
            there = ", ".join(str(s) for s in found) or "none"
            raise LoradeckError(f"run {self.id} has no complete checkpoint at step {step}",
                                kind="usage", where="--checkpoint",
                                hint=f"checkpoints with an adapter: {there}")
        return found[step]

    def latest_checkpoint(self) -> Path | None:
        cps = self.checkpoints()
        return cps[-1] if cps else None

    def summary(self, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Phase, progress and last losses, rebuilt from events.jsonl and state.json."""
        alive = self.alive()  # before the events: a job found ended has written its last line
        try:
            events = self.events() if events is None else events
        except run_files.UnsafeRunFile as exc:  # one bad run never stops a listing
            return summarize(self, [], alive) | {"phase": "damaged", "message": exc.line(),
                                                 "error": exc.line()}
        return summarize(self, events, alive)


def summarize(run: Run, events: list[dict[str, Any]], alive: bool) -> dict[str, Any]:
    """``Run.summary`` from events already read and ``alive`` read before them."""
    state = fold(events)
    phase, message, interrupted = state.reads_as(alive, bool(events))
    error = (state.last_error or {}).get("message")
    st, readable = read_state(run.state_path)
    if not readable:
        phase, message = "state unreadable", f"{run.state_path} is damaged; the events still say " \
            f"{phase}"
    return {
        "id": run.id,
        "phase": phase,
        "message": message,
        "step": state.step,
        "max_steps": state.max_steps,
        "loss": state.loss,
        "eval_loss": state.eval_loss,
        "error": error,
        "alive": alive,
        "interrupted": interrupted,
        "pid": st.get("pid"),
        "model": st.get("model"),
        "dataset": st.get("dataset"),
        "started": state.started,
        "dir": str(run.dir),
        "has_adapter": (run.adapter_dir / "adapter_config.json").is_file(),
        "has_merged": (run.merged_dir / "config.json").is_file(),
        "gpus": st.get("gpus") if isinstance(st.get("gpus"), list) else None,  # the queue's
        "sweep": st.get("sweep") if isinstance(st.get("sweep"), str) else None,
        "system": state.system,
        "method": state.method,
        "key_figure": dict(zip(("name", "value"), key, strict=True))
        if (key := state.key_figure()) else None,
    }


class RunStore:
    """All runs under ``$LORADECK_HOME/runs``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else paths.runs_dir()

    def create(self, config, name: str | None = None) -> Run:
        """A new run directory holding the resolved config; state is ``queued``."""
        from loradeck.engine import config as cfg

        base = _slug(name or config.run.name or config.model.name)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            run_id, n = f"{base}-{stamp}", 1
            while True:  # mkdir is the claim: of processes racing for one id, one wins it
                try:
                    (self.root / run_id).mkdir()
                    break
                except FileExistsError:
                    n += 1
                    run_id = f"{base}-{stamp}-{n}"
            run = Run(self.root / run_id)
            url_store.keep(run.id, config.notify.urls)  # the URLs hold tokens: kept outside
            cfg.save(config.model_copy(update={"notify": config.notify.masked()}),
                     run.config_path)
            write_json_atomic(run.state_path, {"phase": "queued", "created": time.time(),
                                               "model": config.model.name,
                                               "dataset": config.dataset.path})
        except OSError as exc:
            raise joblock.storage_error(exc, Path(exc.filename or self.root)) from None
        return run

    def list(self) -> list[Run]:
        if not self.root.is_dir():
            return []
        runs = [Run(d) for d in self.root.iterdir() if d.is_dir() and (d / "config.yaml").exists()]
        return sorted(runs, key=lambda r: (r.state().get("created") or 0, r.id))

    def resolve(self, ref: str) -> Run:
        """A run by id or unique id prefix; a clear error otherwise."""
        if not ref.strip():
            raise RunNotFound("an empty run reference matches no run", where=str(self.root),
                              hint="give a run id or its start (loradeck runs lists them)")
        direct = self.root / ref
        if ref and direct.is_dir() and (direct / "config.yaml").exists():
            return Run(direct)
        p = Path(ref)
        if p.is_dir() and (p / "config.yaml").exists() and (p / "state.json").exists():
            return Run(p.resolve())
        matches = [r for r in self.list() if r.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise RunNotFound(f"no run matches {ref!r}", where=str(self.root),
                              hint="list runs with: loradeck runs")
        ids = ", ".join(r.id for r in matches[:5])
        raise AmbiguousRun(f"{ref!r} matches {len(matches)} runs: {ids}",
                           hint="give more of the run id")
