"""A run's events in words: one wording for the app's live log and the CLI's ``logs``."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from loradeck.engine.runs.progress import duration


def fmt_loss(value: float | None) -> str:
    """A loss for a table cell or label: four decimals, or a dash when unknown."""
    return "-" if value is None else f"{value:.4f}"


def fmt_duration(seconds: float | None) -> str:
    """``h:mm:ss`` or ``m:ss``; a dash when unknown."""
    return "-" if seconds is None or seconds < 0 else duration(seconds)


def fmt_count(n: float | None) -> str:
    """1234567 -> 1.23M."""
    if n is None:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:g}"


def event_text(ev: dict[str, Any], *, full: bool = False) -> str | None:
    """An event of a run's events.jsonl as a log line's text, without its time (None: not
    worth a line). ``full`` (the CLI's ``logs``) adds what a scrollback has room for: the
    level of every log line, a checkpoint's path, throughput and ETA, the adapter's path."""
    typ = ev.get("type")
    if typ == "status":
        if ev.get("phase") == "done":
            return None  # the ``done`` event just before it says it all, losses included
        msg = ev.get("message") or ""
        return f"{ev.get('phase')}" + (f": {msg}" if msg else "")
    if typ == "log":
        level = str(ev.get("level", "info"))
        quiet = level in ("info", "debug")
        prefix = (f"{level}: " if full else "") if quiet else f"{level.upper()}: "
        return f"{prefix}{ev.get('text', '')}"
    if typ == "metrics":
        return _metrics_text(ev, full)
    if typ == "info":
        return describe_info(ev)
    if typ == "checkpoint":
        text = f"checkpoint saved at step {ev.get('step')}"
        return text + (f": {ev['path']}" if full and ev.get("path") else "")
    if typ == "error":
        text = f"ERROR ({ev.get('kind')}): {ev.get('message')}"
        return text + (f" ({ev['hint']})" if ev.get("hint") else "")
    if typ == "done":
        adapter = str(ev.get("adapter", "adapter"))
        where = adapter if full else (PurePath(adapter).name or "adapter")
        parts = [f"done: adapter saved in {where}/"]
        if ev.get("train_loss") is not None:
            parts.append(f"train loss {fmt_loss(ev['train_loss'])}")
        if ev.get("eval_loss") is not None:
            parts.append(f"eval loss {fmt_loss(ev['eval_loss'])}")
        runtime = ev.get("runtime_s", ev.get("runtime"))
        if isinstance(runtime, (int, float)):
            parts.append(f"in {fmt_duration(runtime)}")
        return ", ".join(parts)
    if typ == "eval" and ev.get("stage") == "done":  # its progress is the Eval screen's
        return _eval_text(ev, full)
    return None


def _eval_text(ev: dict[str, Any], full: bool) -> str:
    """An evaluation's end: each model's chrF, the best checkpoint and the judge."""
    parts = [f"{m.get('name')} chrF {m['scores']['chrf']:.1f}" for m in ev.get("models") or []
             if isinstance(m, dict) and isinstance((m.get("scores") or {}).get("chrf"),
                                                   (int, float))]
    text = f"evaluated on {ev.get('rows')} rows" + (f": {', '.join(parts)}" if parts else "")
    best = ev.get("best_checkpoint") or {}
    if best.get("name"):
        text += f"; best {best['name']}"
    judge = ev.get("judge") or {}
    if judge.get("win_rate") is not None:
        text += f"; judge win rate {judge['win_rate']:.0%}"
    return text + (f" ({ev['path']})" if full and ev.get("path") else "")


def _metrics_text(ev: dict[str, Any], full: bool) -> str | None:
    if ev.get("loss") is None and ev.get("eval_loss") is None and not full:
        return None
    parts = [f"step {ev.get('step')}/{ev.get('max_steps') or '?'}"]
    if ev.get("loss") is not None:
        parts.append(f"loss {fmt_loss(ev['loss'])}")
    if ev.get("eval_loss") is not None:
        parts.append(f"eval_loss {fmt_loss(ev['eval_loss'])}")
    if ev.get("learning_rate") is not None:
        parts.append(f"lr {ev['learning_rate']:.2e}")
    if ev.get("grad_norm") is not None:
        parts.append(f"grad_norm {ev['grad_norm']:.3f}")
    if full and ev.get("tokens_per_second") is not None:
        parts.append(f"{ev['tokens_per_second']:,.0f} tok/s")
    if full and ev.get("eta_seconds") is not None:
        parts.append(f"ETA {fmt_duration(ev['eta_seconds'])}")
    return "  ".join(parts)


def describe_info(ev: dict[str, Any]) -> str:
    """An ``info`` event in words: parameters, memory, rows, device, then any other field."""
    parts = []
    trainable, total = ev.get("trainable_parameters"), ev.get("total_parameters")
    if trainable is not None and total:
        parts.append(f"adapter {fmt_count(trainable)} parameters on a "
                     f"{fmt_count(total - trainable)} base "
                     f"({100 * trainable / total:.2f}%)")
    if ev.get("quantization_auto"):
        parts.append(f"quantization {ev.get('quantization')} (auto: {ev['quantization_auto']})")
    shown = {"t", "type", "trainable_parameters", "total_parameters", "quantization",
             "quantization_auto"} if ev.get("quantization_auto") else \
        {"t", "type", "trainable_parameters", "total_parameters"}
    for key, value in ev.items():
        if key in shown or value is None or isinstance(value, (dict, list)):
            continue
        if isinstance(value, float):
            value = f"{value:.3g}"
        parts.append(f"{key.replace('_', ' ')} {value}")
    return "info: " + ", ".join(parts) if parts else "info"
