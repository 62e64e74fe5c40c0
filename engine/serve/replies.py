"""The chat worker's replies, one dataclass per kind: what the worker writes as a JSON line
(``line``) and what every client reads back (``parse``).

Light module: the standard library only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from loradeck.engine.enums import FinishReason
from loradeck.engine.errors import LoradeckError

LOAD_ERROR_KINDS = ("config", "oom", "network", "auth", "model", "usage")


@dataclass(frozen=True)
class ModelLoaded:
    """The model is loaded; ``model`` is its info (name, parameters, device, dtype, ...)."""

    id: str
    model: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Token:
    """A piece of the reply being written."""

    id: str
    text: str


@dataclass(frozen=True)
class Finished:
    """The reply ended: its whole text and figures."""

    id: str
    text: str = ""
    tokens: int = 0
    ttft_s: float | None = None
    tokens_per_second: float = 0.0
    finish_reason: FinishReason = FinishReason.STOP
    prompt_tokens: int = 0
    elapsed_s: float = 0.0
    adapter: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    torch_imported: bool | None = None  # llama.cpp's worker says whether torch came in

    @property
    def stopped(self) -> bool:
        return self.finish_reason == FinishReason.CANCELLED

    def stats(self) -> str:
        """``ttft 0.21 s · 38.4 tok/s · 57 tokens`` (+ why it ended, when not a natural stop):
        the one figures line of the app, the CLI and saved chats."""
        parts = [f"ttft {self.ttft_s:.2f} s" if self.ttft_s is not None else "ttft -"]
        parts += [f"{self.tokens_per_second:.1f} tok/s", f"{self.tokens} tokens"]
        if self.finish_reason == FinishReason.CANCELLED:
            parts.append("stopped")
        elif self.finish_reason == FinishReason.LENGTH:
            parts.append("hit max new tokens")
        return " · ".join(parts)


@dataclass(frozen=True)
class Failed:
    """The request failed: ``kind`` is request | params | not_loaded | model | oom | internal
    (or a LoradeckError kind on load)."""

    id: str
    kind: str = "internal"
    message: str = "the chat worker failed"

    def error(self) -> LoradeckError:
        """As a generation error to show or raise."""
        return LoradeckError(self.message, kind="oom" if self.kind == "oom" else "usage")

    def load_error(self) -> LoradeckError:
        """As a failed load."""
        kind = self.kind if self.kind in LOAD_ERROR_KINDS else "model"
        return LoradeckError(f"the chat model did not load: {self.message}", kind=kind)


Reply = Token | Finished | Failed
KINDS: dict[str, type[ModelLoaded | Token | Finished | Failed]] = {
    "loaded": ModelLoaded, "token": Token, "done": Finished, "error": Failed}
NAMES = {cls: name for name, cls in KINDS.items()}


def line(reply: ModelLoaded | Reply) -> str:
    """The reply as one JSON line (no newline)."""
    return json.dumps({"type": NAMES[type(reply)], **dataclasses.asdict(reply)},
                      ensure_ascii=False, default=str)


def parse(data: Any) -> ModelLoaded | Reply | None:
    """A reply line's object as its dataclass; None when it is not one (unknown fields are
    left out, so an older or newer worker still reads)."""
    if not isinstance(data, dict):
        return None
    cls = KINDS.get(str(data.get("type")))
    if cls is None:
        return None
    known = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in data.items() if k in known}
    values["id"] = str(values.get("id"))
    if cls is Finished:
        try:
            values["finish_reason"] = FinishReason(values.get("finish_reason", "stop"))
        except ValueError:
            values["finish_reason"] = FinishReason.STOP
        values["tokens"] = int(values.get("tokens") or 0)
        tps = values.get("tokens_per_second")
        values["tokens_per_second"] = float(tps) if isinstance(tps, (int, float)) else 0.0
    try:
        return cls(**values)
    except TypeError:
        return None
