"""The private Textual names the app uses are all in loradeck.tui.textual_compat, and still
there in the installed Textual: these fail loudly when Textual changes under the pin."""

from __future__ import annotations

import asyncio
import inspect
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from textual.app import App
from textual.widgets import DataTable, Input, Markdown

from loradeck.tui import textual_compat as compat
from tests.conftest import ROOT


def test_pinned_version_is_the_one_checked():
    assert version("textual") == compat.CHECKED_WITH
    pin = re.search(r'"textual==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin and pin.group(1) == compat.CHECKED_WITH


@pytest.mark.parametrize("dotted", sorted(compat.OVERRIDDEN))
def test_overridden_private_hooks_keep_their_signature(dotted):
    assert str(inspect.signature(compat.resolve(dotted))) == compat.OVERRIDDEN[dotted]


@pytest.mark.parametrize("dotted", sorted(compat.RELIED_ON))
def test_methods_relied_on_are_unchanged(dotted):
    assert compat.source_sha(dotted) == compat.RELIED_ON[dotted], (
        f"{dotted} changed in Textual {version('textual')}: check the hook that relies on it")


def test_private_attributes_exist_on_live_objects():
    """Each private name the compat module uses is on a live object of its class (instance
    attributes included), in the installed Textual."""
    asyncio.run(_check_private_attributes())


async def _check_private_attributes() -> None:
    from textual.binding import Binding
    from textual.widgets import Footer

    from loradeck.tui.textual_compat import FooterKey

    class Probe(App):
        BINDINGS = [Binding("q", "quit", "Quit")]

    app = Probe()
    async with app.run_test() as pilot:
        footer = Footer()
        key = FooterKey("q", "q", "Quit", "quit")
        await app.screen.mount_all([DataTable(), Input(), footer, key])
        await pilot.pause()
        live = {cls: [w for w in app.screen.walk_children() if type(w) is cls]
                for cls in (DataTable, Input, Footer)}
        objects = {"textual.app.App": app, "textual.screen.Screen": app.screen,
                   "textual._compositor.Compositor": app.screen._compositor}
        for dotted, names in compat.PRIVATE_ATTRIBUTES.items():
            cls = compat.resolve(dotted)
            obj = objects.get(dotted)
            if obj is None:
                found = live.get(cls) or list(app.screen.query(cls))
                assert found, f"no live {dotted} to check"
                obj = found[0]
            missing = [n for n in names if not hasattr(obj, n)]
            assert not missing, f"{dotted} lost {missing} in Textual {version('textual')}"


def test_no_private_textual_name_outside_the_compat_module():
    """Imports of Textual's private modules, and the private attributes the compat module
    covers, appear nowhere else in loradeck.tui (the app's own classes may still override
    the hooks listed in OVERRIDDEN, by name)."""
    covered = {n for names in compat.PRIVATE_ATTRIBUTES.values() for n in names}
    overridden = {d.rsplit(".", 1)[1] for d in compat.OVERRIDDEN}
    found = []
    for path in sorted((ROOT / "tui").rglob("*.py")):
        if path.name == "textual_compat.py":
            continue
        text = path.read_text()
        for lineno, line in enumerate(text.splitlines(), 1):
            if re.search(r"textual\.(widgets\.)?_\w", line):
                found.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
            for name in re.findall(r"\.(_[a-z]\w*)", line):
                if name in covered and name not in overridden:
                    found.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not found, "\n".join(found)


def test_reply_chunk_appends_without_holding_frames(monkeypatch):
    """ReplyChunk.append is Textual's own Markdown.append, run so that it does not hold the
    app's frames back with batch_update across its awaits; a plain Markdown still does."""
    asyncio.run(_append_both(monkeypatch))


async def _append_both(monkeypatch: pytest.MonkeyPatch) -> None:
    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.widgets.chat_log import ReplyChunk

    app = LoradeckApp(demo=True)
    async with app.run_test() as pilot:
        chunk, plain = ReplyChunk("Hello"), Markdown("Hello")
        await app.screen.mount_all([chunk, plain])
        await pilot.pause()
        batches: list[str] = []
        begin = App._begin_batch
        monkeypatch.setattr(App, "_begin_batch", lambda self: (batches.append("begin"),
                                                               begin(self)))
        await chunk.append(" world\n\nmore")
        assert batches == []
        assert chunk.source == "Hello world\n\nmore"
        await plain.append(" world\n\nmore")
        assert batches, "Markdown.append no longer batches: ReplyChunk's hook is moot"


def test_compat_module_is_in_the_package():
    assert Path(compat.__file__).resolve() == (ROOT / "tui" / "textual_compat.py").resolve()
