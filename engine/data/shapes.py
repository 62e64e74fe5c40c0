"""The shape of a dataset's rows, detected from its columns (or forced by dataset.format), and
which column plays each role (dataset.columns overrides the detection). Light module."""

from __future__ import annotations

import json
from typing import Any

from loradeck.engine.enums import DataRole, DatasetFormat, values
from loradeck.engine.errors import LoradeckError

FORMATS = values(DatasetFormat)
SHAPES = FORMATS[1:]
ROLES = values(DataRole)

# Column names each role is detected under, in order of preference.
ALIASES: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction", "question", "prompt"),
    "context": ("context", "input"),
    "response": ("response", "output", "answer", "completion"),
    "messages": ("messages", "conversations", "conversation"),
    "prompt": ("prompt",),
    "completion": ("completion",),
    "text": ("text",),
    "system": ("system", "system_prompt"),
    "tools": ("tools",),
}

# shape -> (required roles, optional roles)
SHAPE_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "instruction": (("instruction", "response"), ("context", "system")),
    "messages": (("messages",), ("system", "tools")),
    "prompt-completion": (("prompt", "completion"), ()),
    "text": (("text",), ()),
}

# Columns that mark data for another training method, or data that is not only text.
PREFERENCE_COLUMNS = ("chosen", "rejected")
LABEL_COLUMNS = ("label", "kto_tag")
MEDIA_COLUMNS = ("images", "image", "videos", "video", "audios", "audio")

_COLUMNS_HINT = "map your columns with dataset.columns, e.g. {instruction: question, response: answer}"


def detect(found: list[str], first: dict[str, Any] | None = None, format: str = "auto",
           columns: dict[str, str] | None = None, source: str = "dataset"
           ) -> tuple[str, dict[str, str]]:
    """Pick the shape and the role -> column mapping; ``columns`` and ``format`` override."""
    overrides = dict(columns or {})
    found_list = ", ".join(found) or "(none)"
    unknown_roles = sorted(set(overrides) - set(ROLES))
    if unknown_roles:
        raise LoradeckError(f"dataset.columns: unknown role {unknown_roles[0]!r}", kind="config",
                            hint=f"roles are {', '.join(ROLES)}")
    absent = [f"{role}: {col}" for role, col in overrides.items() if col not in found]
    if absent:
        raise LoradeckError(f"dataset.columns names missing column(s) {', '.join(absent)}; "
                            f"columns found: {found_list}", kind="data", where=source,
                            hint="fix dataset.columns to name columns the data has")
    if format not in FORMATS:
        raise LoradeckError(f"dataset.format: unknown format {format!r}", kind="config",
                            hint=f"use one of {', '.join(FORMATS)}")
    refuse_other_methods(found, first, source)
    taken = set(overrides.values())

    def pick(role: str) -> str | None:
        if role in overrides:
            return overrides[role]
        for name in ALIASES[role]:
            if name in found and name not in taken:
                return name
        return None

    shape = format
    if shape == "auto":
        shape = _auto_shape(overrides, pick, first)
    if shape is None:
        raise LoradeckError(f"unknown dataset shape; columns found: {found_list}", kind="data",
                            where=source,
                            hint="expected instruction/response (dolly, alpaca), messages or "
                                 "conversations, prompt/completion, or text; " + _COLUMNS_HINT)
    required, optional = SHAPE_ROLES[shape]
    mapping: dict[str, str] = {}
    for role in (*required, *optional):
        col = pick(role)
        if col is not None and col not in mapping.values():
            mapping[role] = col
    missing = [r for r in required if r not in mapping]
    if missing:
        looked = "; ".join(f"{r}: {' or '.join(ALIASES[r])}" for r in missing)
        example = ", ".join(f"{r}: <column>" for r in missing)
        raise LoradeckError(f"missing column(s) for the {shape} shape ({looked}); "
                            f"columns found: {found_list}", kind="data", where=source,
                            hint=f"name them in dataset.columns, e.g. {{{example}}}")
    return shape, mapping


def refuse_other_methods(found: list[str], first: dict[str, Any] | None, source: str) -> None:
    """Refuse, by name, data that SFT would misread: preference pairs, answers labelled good
    or bad (KTO), and rows with images, video or audio."""
    present = set(found)
    if set(PREFERENCE_COLUMNS) <= present:
        raise LoradeckError(
            "this is a preference dataset (a chosen and a rejected answer in each row), which "
            "SFT cannot learn from", kind="data", where=source,
            hint="set training.method dpo (or orpo) to train on it; for SFT, keep each prompt "
                 "with its chosen answer as messages")
    label = next((c for c in LABEL_COLUMNS if c in present), None)
    if label is not None and (first is None or isinstance(first.get(label), bool)):
        raise LoradeckError(
            f"this is a KTO dataset (answers labelled good or bad in column {label!r}); SFT "
            "would learn the bad answers as good", kind="data", where=source,
            hint=f"set training.method kto to train on it; for SFT, keep the rows whose "
                 f"{label} is true and drop the column")
    media = [c for c in MEDIA_COLUMNS if c in present]
    if media:
        raise LoradeckError(
            f"this is a multimodal dataset (column {media[0]!r}); loradeck trains text models, "
            "so the media would be dropped and markers such as <image> learned as text",
            kind="data", where=source,
            hint=f"use a text-only dataset, or drop the {media[0]} column and the markers")


def _auto_shape(overrides: dict[str, str], pick, first: dict[str, Any] | None) -> str | None:
    if "messages" in overrides:
        return "messages"
    if {"prompt", "completion"} & set(overrides):
        return "prompt-completion"
    if {"instruction", "response", "context"} & set(overrides):
        return "instruction"
    if "text" in overrides:
        return "text"
    col = pick("messages")
    if col is not None and (first is None or isinstance(maybe_json(first.get(col)), list)):
        return "messages"
    if pick("prompt") and pick("completion"):
        return "prompt-completion"
    if pick("instruction") or pick("response"):
        return "instruction"
    if pick("text"):
        return "text"
    return None


def maybe_json(value: Any) -> Any:
    """A JSON list or object stored as a string (CSV cells, ShareGPT tool calls) becomes the
    list or object."""
    if isinstance(value, str) and value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value
    return value
