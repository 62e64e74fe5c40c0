"""loradeck's themes, kept as TOML data files next to this module and turned into Textual themes.

A theme file holds ``name``, ``dark``, optional ``luminosity_spread`` / ``text_alpha``, a
``[colors]`` table (primary, secondary, accent, warning, error, success, foreground, background,
surface, panel, boost) and a ``[variables]`` table of Textual theme variables.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from textual.app import App
    from textual.theme import Theme

THEMES_DIR = Path(__file__).resolve().parent
DEFAULT_THEME = "loradeck-dark"
COLOR_KEYS = ("primary", "secondary", "accent", "warning", "error", "success", "foreground",
              "background", "surface", "panel", "boost")


class ThemeFileError(ValueError):
    """A theme file that cannot be turned into a theme; the message names the file."""


def theme_from_data(data: dict[str, Any], source: str = "theme") -> Theme:
    """Build a ``textual.theme.Theme`` from the parsed contents of a theme file."""
    from textual.theme import Theme

    name = data.get("name")
    colors = data.get("colors") or {}
    if not isinstance(name, str) or not name:
        raise ThemeFileError(f"{source}: 'name' is missing")
    if "primary" not in colors:
        raise ThemeFileError(f"{source}: colors.primary is missing")
    unknown = sorted(set(colors) - set(COLOR_KEYS))
    if unknown:
        raise ThemeFileError(f"{source}: unknown colour {unknown[0]!r}; "
                             f"allowed: {', '.join(COLOR_KEYS)}")
    extra: dict[str, Any] = {}
    for key in ("luminosity_spread", "text_alpha"):
        if key in data:
            extra[key] = float(data[key])
    variables = {str(k): str(v) for k, v in (data.get("variables") or {}).items()}
    return Theme(name=name, dark=bool(data.get("dark", True)), variables=variables,
                 **{k: str(v) for k, v in colors.items()}, **extra)


def load_theme(path: str | Path) -> Theme:
    """Read one theme file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ThemeFileError(f"{p}: not valid TOML: {exc}") from None
    return theme_from_data(data, source=str(p))


def load_themes(directory: str | Path = THEMES_DIR) -> list[Theme]:
    """Every ``*.toml`` theme in ``directory``, sorted by file name."""
    return [load_theme(p) for p in sorted(Path(directory).glob("*.toml"))]


def register_themes(app: App, directory: str | Path = THEMES_DIR) -> list[str]:
    """Register the theme files with ``app``; returns their names."""
    names = []
    for theme in load_themes(directory):
        app.register_theme(theme)
        names.append(theme.name)
    return names
