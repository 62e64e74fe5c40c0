"""The user's app settings (the theme, for now), kept as YAML in loradeck.engine.runs.paths.settings_file().

yaml is imported only when there is a file to read or write: the app reads its settings before
its first frame.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loradeck.engine.runs import paths


def settings_path() -> Path:
    return paths.settings_file()


def load_settings() -> dict[str, Any]:
    """The saved settings; an empty dict when there are none or the file is unreadable."""
    p = settings_path()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError:
        return {}
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(settings: dict[str, Any]) -> Path:
    """Write the settings atomically; returns the file."""
    import yaml

    p = settings_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(settings, sort_keys=True, allow_unicode=True), encoding="utf-8")
    os.replace(tmp, p)
    return p


def update_settings(**changes: Any) -> dict[str, Any]:
    """Merge ``changes`` into the saved settings and write them."""
    settings = load_settings()
    settings.update(changes)
    save_settings(settings)
    return settings


def save_theme(name: str) -> None:
    update_settings(theme=name)
