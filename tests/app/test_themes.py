"""Themes: data files turned into Textual themes, switched from the palette, kept for next time."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from loradeck import themes
from loradeck.engine.runs import paths
from loradeck.tui.app import LoradeckApp


def test_theme_files_load_as_textual_themes():
    loaded = {t.name: t for t in themes.load_themes()}
    assert {"loradeck-dark", "loradeck-light", "loradeck-contrast"} <= set(loaded)
    assert loaded["loradeck-dark"].dark and not loaded["loradeck-light"].dark
    contrast = loaded["loradeck-contrast"]
    assert (contrast.background, contrast.foreground) == ("#000000", "#ffffff")
    for theme in loaded.values():  # every colour parses into a full colour system
        assert theme.to_color_system().generate()["primary"]


def test_bad_theme_file_names_the_file(tmp_path):
    bad = tmp_path / "mine.toml"
    bad.write_text('name = "mine"\n[colors]\nbackground = "#000000"\n', encoding="utf-8")
    with pytest.raises(themes.ThemeFileError, match=r"mine\.toml: colors\.primary is missing"):
        themes.load_themes(tmp_path)
    bad.write_text('name = "mine"\n[colors\n', encoding="utf-8")
    with pytest.raises(themes.ThemeFileError, match=r"mine\.toml: not valid TOML"):
        themes.load_themes(tmp_path)


async def _pick_theme(keys: tuple[str, ...]) -> str:
    app = LoradeckApp(demo=True)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert app.theme == "loradeck-dark"  # the default
        await pilot.press(*keys)
        await pilot.pause(0.2)
        return app.theme


async def _start_theme() -> str:
    app = LoradeckApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        return app.theme


def test_theme_command_switches_and_persists_across_restarts():
    chosen = asyncio.run(_pick_theme(("ctrl+p", *"Theme: loradeck-light", "enter")))
    assert chosen == "loradeck-light"
    saved = yaml.safe_load(paths.settings_file().read_text(encoding="utf-8"))
    assert saved["theme"] == "loradeck-light"
    assert asyncio.run(_start_theme()) == "loradeck-light"


async def _pick_in_textual_picker() -> tuple[list[str], str]:
    from textual.command import CommandPalette

    app = LoradeckApp(demo=True)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        app.action_change_theme()  # what the palette's built-in "Theme" command runs
        await pilot.pause(0.3)
        assert isinstance(app.screen, CommandPalette)
        listed = [str(o.prompt) for o in app.screen.query_one("CommandList").options]
        await pilot.press(*"contrast", "enter")
        await pilot.pause(0.2)
        return listed, app.theme


def test_textual_theme_picker_lists_ours_and_persists():
    listed, chosen = asyncio.run(_pick_in_textual_picker())
    assert {"loradeck-dark", "loradeck-light", "loradeck-contrast"} <= set(listed)
    assert chosen == "loradeck-contrast"
    assert asyncio.run(_start_theme()) == "loradeck-contrast"
