"""Sampling parameters of a chat reply: one model with the defaults, the ranges and the help
line of each, shared by the chat worker, ``loradeck chat`` and the Chat screen."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ChatParams(BaseModel):
    """What ``generate`` takes in ``params``; every field has a default."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.7, ge=0, description="0 is greedy, higher is more varied "
                                                        "(0 or more)")
    top_p: float = Field(0.9, gt=0, le=1, description="sample from the smallest set of tokens "
                         "whose probability adds up to this (above 0, at most 1)")
    top_k: int = Field(50, ge=0, description="sample from the k most likely tokens (0 turns it "
                       "off)")
    max_new_tokens: int = Field(256, ge=1, description="the longest reply in tokens (1 or more)")
    repetition_penalty: float = Field(1.1, gt=0, description="above 1 discourages repeats "
                                      "(above 0)")
    seed: int | None = Field(None, description="a seed for sampling, for replies you can repeat")


FIELDS = tuple(ChatParams.model_fields)


def from_generation_config(generation_config: Any) -> dict[str, Any]:
    """The sampling values a model's generation config sets itself (not transformers'
    defaults), as ChatParams fields; ``do_sample: false`` with no temperature is greedy."""
    if generation_config is None:
        return {}
    try:
        own = generation_config.to_diff_dict()
    except Exception:  # not a GenerationConfig
        return {}
    out = {k: own[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty",
                               "max_new_tokens") if own.get(k) is not None}
    if own.get("do_sample") is False and "temperature" not in out:
        out["temperature"] = 0.0
    return out


def default(name: str) -> Any:
    return ChatParams.model_fields[name].default


def value_type(name: str) -> type:
    """``int`` or ``float``: what a field's value is (for a command-line flag)."""
    annotation = ChatParams.model_fields[name].annotation
    return float if annotation is float else int


def help_line(name: str) -> str:
    return f"{name.replace('_', ' ')}: {ChatParams.model_fields[name].description}"


def check(params: dict[str, Any] | None, model_defaults: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    """Params with defaults filled in (None means the default): the model's own
    (``model_defaults``, from its generation config) where it has one, else ChatParams'.
    ValueError with one line naming the bad key, what it got and what is allowed."""
    given = {k: v for k, v in (params or {}).items() if v is not None}
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown param {unknown[0]!r}; allowed: {', '.join(FIELDS)}")
    filled = {k: v for k, v in (model_defaults or {}).items() if k in FIELDS and v is not None}
    try:
        return ChatParams.model_validate({**filled, **given}, strict=False).model_dump()
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err.get("loc") else "params"
        got = err.get("input")
        what = ChatParams.model_fields[key].description if key in FIELDS else err["msg"]
        raise ValueError(f"{key} must be {what} (got {got!r})") from None
