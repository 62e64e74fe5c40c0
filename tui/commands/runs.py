"""``loradeck runs``, ``status RUN`` and ``logs RUN``: what runs exist and how they are doing."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from loradeck.engine.runs import run_files
from loradeck.engine.runs.events import EventTail, read_events
from loradeck.engine.runs.store import Run, RunStore
from loradeck.tui.event_text import event_text

POLL_S = 0.25


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def _num(v: Any, fmt: str = "{:.4f}") -> str:
    return fmt.format(v) if isinstance(v, (int, float)) else "-"


def _steps(s: dict[str, Any]) -> str:
    return f"{s['step']}/{s['max_steps']}" if s.get("max_steps") else str(s.get("step") or 0)


def _runs(args) -> int:
    summaries = [r.summary() for r in RunStore().list()]
    if args.json:
        print(json.dumps(summaries, indent=2, ensure_ascii=False))
        return 0
    if not summaries:
        print("no runs yet; start one with: loradeck train CONFIG (or: loradeck train demo)")
        return 0
    rows = [("RUN", "PHASE", "STEP", "LOSS", "ALIVE", "STARTED")]
    rows += [(s["id"], s["phase"], _steps(s), _num(s["loss"]), "yes" if s["alive"] else "no",
              _when(s["started"])) for s in summaries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _status(args) -> int:
    run = RunStore().resolve(args.run)
    s = run.summary()
    if args.json:
        print(json.dumps(s, indent=2, ensure_ascii=False))
        return 0
    lines = [("run", s["id"]),
             ("phase", s["phase"] + (f" ({s['message']})" if s["message"] else "")),
             ("step", str(s["step"] or 0)),
             ("max_steps", str(s["max_steps"]) if s["max_steps"] else "-"),
             ("loss", _num(s["loss"])),
             ("eval loss", _num(s["eval_loss"])),
             ("alive", f"yes (pid {s['pid']})" if s["alive"] else "no"),
             ("model", s.get("model") or "-"),
             ("adapter", str(run.adapter_dir) if s["has_adapter"] else "-"),
             ("dir", s["dir"])]
    system = s.get("system")
    if system:
        from loradeck.engine.system.sampler import describe

        ago = max(0.0, time.time() - float(system.get("t") or time.time()))
        lines.insert(-1, ("machine", f"{describe(system)} ({ago:.0f} s ago)"))
    if s.get("error"):
        lines.insert(2, ("error", s["error"]))
    for key, value in lines:
        print(f"{key:<10} {value}")
    return 0


def human_line(ev: dict[str, Any]) -> str | None:
    """One event as a line of the human log: its clock time and its text in full (None for
    nothing worth a line)."""
    text = event_text(ev, full=True)
    if text is None:
        return None
    return f"{time.strftime('%H:%M:%S', time.localtime(ev.get('t', 0)))} {text}"


def _print_events(events: list[dict[str, Any]]) -> None:
    for ev in events:
        line = human_line(ev)
        if line:
            print(line)
    sys.stdout.flush()


def _open_log(run: Run):
    return os.fdopen(run_files.open_fd(run.log_path), "rb")


def _logs(args) -> int:
    run: Run = RunStore().resolve(args.run)
    tail = EventTail(run.events_path)
    _print_events(tail.poll())
    raw = _open_log(run) if run.log_path.exists() else None
    if raw is not None:
        print(f"--- {run.log_path} ---")
        sys.stdout.write(raw.read().decode("utf-8", errors="replace"))
        sys.stdout.flush()
    if not args.follow:
        return 0
    try:
        while True:
            alive = run.alive()
            events = tail.poll()
            _print_events(events)
            if raw is None and run.log_path.exists():
                raw = _open_log(run)
            chunk = raw.read() if raw is not None else b""
            if chunk:
                sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                sys.stdout.flush()
            if not alive and not events and not chunk:
                break
            if not events and not chunk:
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        return 0
    summary = run.summary(read_events(run.events_path))
    print(f"--- run {run.id}: {summary['phase']} ---")
    return 0


def run(args) -> int:
    return {"runs": _runs, "status": _status, "logs": _logs}[args.command](args)
