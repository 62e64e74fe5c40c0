"""Where loradeck keeps runs, models and settings (platformdirs, or LORADECK_HOME)."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir, user_config_dir, user_data_dir

APP = "loradeck"


def home() -> Path:
    """The data root: $LORADECK_HOME, else the user data dir."""
    env = os.environ.get("LORADECK_HOME")
    return Path(env).expanduser() if env else Path(user_data_dir(APP))


def runs_dir() -> Path:
    return home() / "runs"


def cache_dir() -> Path:
    """Built artefacts such as demo:tiny: $LORADECK_CACHE, else under LORADECK_HOME when set."""
    explicit = os.environ.get("LORADECK_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("LORADECK_HOME")
    return Path(env).expanduser() / "cache" if env else Path(user_cache_dir(APP))


def settings_file() -> Path:
    """The user's app settings (theme and such)."""
    env = os.environ.get("LORADECK_HOME")
    base = Path(env).expanduser() if env else Path(user_config_dir(APP))
    return base / "settings.yaml"
