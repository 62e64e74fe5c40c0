"""The app's screens in key order: (mode name, key, label). A leaf module: the app, the
navigation bar and the palette read it; it imports nothing of the app."""

from __future__ import annotations

SCREENS: tuple[tuple[str, str, str], ...] = (
    ("model", "m", "Model"),
    ("data", "d", "Data"),
    ("lora", "l", "LoRA"),
    ("train", "t", "Train"),
    ("chat", "c", "Chat"),
    ("eval", "e", "Eval"),
    ("push", "p", "Push"),
    ("runs", "r", "Runs"),
)
