"""The rows an evaluation answers: the run's held-out eval rows (written into the run
directory when training prepared its data, so the split is the one the run never trained
on), or a JSONL file of prompts with optional references.

Light module: the standard library only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs import run_files

HELD_OUT_FILE = "eval_rows.jsonl"


@dataclass
class EvalRow:
    """One prompt: the conversation so far (``messages``) or a plain ``prompt`` text, the
    reference answer when there is one, and where it came from (file and row)."""

    where: str
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    reference: str | None = None
    tools: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def text(self) -> str:
        """The prompt as a person reads it: the last user turn, or the plain prompt."""
        if self.messages is not None:
            users = [m for m in self.messages if m.get("role") == "user"]
            return _content(users[-1].get("content")) if users else ""
        return self.prompt or ""

    def prompt_text(self, renderer: Any) -> str:
        """The generation prompt, rendered as training rendered it (a plain prompt as is)."""
        if self.messages is not None:
            return renderer.prompt(self.messages)
        return self.prompt or ""

    def completion_text(self, renderer: Any) -> str | None:
        """The reference as training rendered a completion (ending in EOS), for its loss."""
        if not self.reference:
            return None
        if self.messages is not None:
            example = {"messages": [*self.messages,
                                    {"role": "assistant", "content": self.reference}]}
            if self.tools:
                example["tools"] = self.tools
            return renderer.render(example)[1]
        return renderer.render({"prompt": self.prompt or "", "completion": self.reference})[1]

    def to_dict(self) -> dict[str, Any]:
        return {"where": self.where, "prompt": self.text, "reference": self.reference}


def _content(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(p.get("text") or p.get("value") or "") for p in content
                        if isinstance(p, dict))
    return str(content or "")


def from_example(example: dict[str, Any], where: str) -> EvalRow:
    """A normalized training example (engine/data/rows) as an eval row: its last assistant
    turn is the reference."""
    if "messages" in example:
        messages = list(example["messages"])
        reference = None
        if messages and messages[-1].get("role") == "assistant":
            reference = _content(messages.pop().get("content"))
        return EvalRow(where, messages=messages, reference=reference or None,
                       tools=example.get("tools"))
    if "prompt" in example:
        return EvalRow(where, prompt=str(example["prompt"]),
                       reference=str(example.get("completion") or "") or None)
    raise LoradeckError("a plain-text row has no prompt to answer", kind="data", where=where,
                        hint="give prompts with: loradeck eval RUN --prompts FILE.jsonl")


def save_held_out(run_dir: Path, rows: list[tuple[dict[str, Any], str]]) -> Path:
    """Write the run's held-out rows (normalized example, where) as RUN/eval_rows.jsonl."""
    path = Path(run_dir) / HELD_OUT_FILE
    text = "".join(json.dumps({"example": e, "where": w}, ensure_ascii=False) + "\n"
                   for e, w in rows)
    tmp = path.with_name(f".{HELD_OUT_FILE}.tmp-{os.getpid()}")
    run_files.write_text(tmp, text)
    os.replace(tmp, path)
    return path


def held_out(run_dir: Path, run_id: str) -> list[EvalRow]:
    """The run's held-out eval rows, never a row it trained on."""
    path = Path(run_dir) / HELD_OUT_FILE
    try:
        text = run_files.read_text(path)
    except FileNotFoundError:
        raise LoradeckError(f"run {run_id} has no held-out eval rows", kind="usage",
                            where=str(path), hint="its dataset.eval_fraction was 0, it is a "
                            "GRPO run (they hold out none), its data is plain text, or it was "
                            "trained before loradeck kept them; give "
                            "prompts with: loradeck eval RUN --prompts FILE.jsonl") from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            item = json.loads(line)
            rows.append(from_example(item["example"], item.get("where") or f"{path}:{n}"))
    if not rows:
        raise LoradeckError(f"run {run_id} held out no eval rows", kind="usage",
                            where=str(path), hint="give prompts with --prompts FILE.jsonl")
    return rows


def from_file(path: str | Path) -> list[EvalRow]:
    """Rows of a JSONL file: ``prompt`` with an optional ``reference``, or ``messages`` (a
    last assistant turn is the reference). A bad line is refused with its number."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LoradeckError(f"no prompts file at {path}", kind="usage", where="--prompts",
                            hint="give a JSONL file with a prompt (and a reference) per "
                                 "line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LoradeckError(f"cannot read {path}: {exc}", kind="usage",
                            where="--prompts") from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise LoradeckError(f"line {n} is not JSON ({exc.msg})", kind="data", where=where,
                                hint="one JSON object per line") from None
        rows.append(_file_row(item, where))
    if not rows:
        raise LoradeckError("the prompts file has no rows", kind="data", where=str(path),
                            hint='one {"prompt": ..., "reference": ...} per line')
    return rows


def _file_row(item: Any, where: str) -> EvalRow:
    if isinstance(item, dict) and isinstance(item.get("messages"), list) and item["messages"]:
        messages = item["messages"]
        if not all(isinstance(m, dict) and m.get("role") in ("system", "user", "assistant",
                                                             "tool") for m in messages):
            raise LoradeckError("messages need a role of system, user or assistant each",
                                kind="data", where=where, hint="fix the row")
        row = from_example({"messages": messages}, where)
        if item.get("reference"):
            row.reference = str(item["reference"])
        if not any(m.get("role") == "user" for m in row.messages or []):
            raise LoradeckError("messages have no user turn", kind="data", where=where,
                                hint="end them with the user's question")
        return row
    if isinstance(item, dict) and isinstance(item.get("prompt"), str) and item["prompt"]:
        reference = item.get("reference")
        return EvalRow(where, messages=[{"role": "user", "content": item["prompt"]}],
                       reference=str(reference) if reference not in (None, "") else None)
    raise LoradeckError("a row needs a prompt (text) or messages (a list)", kind="data",
                        where=where, hint='write {"prompt": "...", "reference": "..."}')
