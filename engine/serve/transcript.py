"""A chat saved to a file: Markdown to read (``.md`` and any other name), or JSON for scripts
(``.json``) and training rows (``.jsonl``: one ``{"messages": [...]}`` line per side, the
conversational shape loradeck trains on)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from loradeck.engine.errors import UsageError


@dataclass
class Turn:
    """One message as shown: ``role`` user or assistant, and a reply's figures line."""

    role: str
    content: str
    stats: str = ""


@dataclass
class Side:
    """One pane of the chat (``tuned``, ``base``, ``GGUF q4_k_m``...) and its turns."""

    title: str
    turns: list[Turn] = field(default_factory=list)

    def messages(self, system: str | None) -> list[dict[str, str]]:
        head = [{"role": "system", "content": system}] if system else []
        return head + [{"role": t.role, "content": t.content} for t in self.turns]


def render_markdown(model: str, sides: list[Side], system: str | None, saved: str) -> str:
    lines = [f"# Chat with {model}", "", f"saved {saved}"]
    if system:
        lines += ["", f"system: {system}"]
    for side in sides:
        if len(sides) > 1:
            lines += ["", f"## {side.title}"]
        for turn in side.turns:
            who = "You" if turn.role == "user" else "Model"
            lines += ["", f"**{who}**", "", turn.content.rstrip() or "(no text)"]
            if turn.stats:
                lines += ["", f"_{turn.stats}_"]
    return "\n".join(lines) + "\n"


def render(path: Path, model: str, sides: list[Side], system: str | None,
           now: datetime | None = None) -> str:
    """The file's text for ``path``'s suffix."""
    saved = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    if path.suffix == ".jsonl":
        return "".join(json.dumps({"messages": s.messages(system)}, ensure_ascii=False) + "\n"
                       for s in sides if s.turns)
    if path.suffix == ".json":
        data = {"model": model, "saved": saved,
                "sides": [{"title": s.title, "messages": s.messages(system),
                           "stats": [t.stats for t in s.turns if t.role == "assistant"]}
                          for s in sides]}
        return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    return render_markdown(model, sides, system, saved)


def save(path: str | Path, model: str, sides: list[Side], system: str | None = None, *,
         overwrite: bool = False) -> Path:
    """Write the chat to ``path`` whole or not at all; an existing file is kept unless
    ``overwrite`` (a file this session saved before)."""
    target = Path(path).expanduser()
    if not any(s.turns for s in sides):
        raise UsageError("there is nothing to save yet", hint="send a prompt first")
    if target.is_dir():
        raise UsageError("is a directory", where=str(target), hint="give a file name")
    if not target.parent.is_dir():
        raise UsageError("no such directory", where=str(target.parent),
                         hint="create it, or save elsewhere")
    if target.exists() and not overwrite:
        raise UsageError("the file exists; it was kept", where=str(target),
                         hint="give another name")
    text = render(target, model, sides, system)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise UsageError(f"cannot write it: {exc.strerror}", where=str(target),
                         hint="save elsewhere") from exc
    return target


def unique_path(folder: Path, stem: str, suffix: str = ".md") -> Path:
    """``folder/stem-YYYYmmdd-HHMMSS.md``, with -2, -3... when that exists."""
    folder.mkdir(parents=True, exist_ok=True)
    base = f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, n = folder / f"{base}{suffix}", 2
    while path.exists():
        path, n = folder / f"{base}-{n}{suffix}", n + 1
    return path
