"""The one runtime import check: in a fresh process, every module of the app and the engine's
light modules load, the app starts on the demo and does its first work (the cache scan, the
dataset inspection, an estimate), and no heavy library is imported. The static rules are
import-linter's contracts in pyproject.toml, run here too."""

from __future__ import annotations

import json
import os
import pkgutil
import shutil
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "bitsandbytes", "accelerate")
LIGHT_ENGINE = (
    "loradeck.engine.config", "loradeck.engine.errors", "loradeck.engine.runs.store",
    "loradeck.engine.runs.events", "loradeck.engine.runs.lock", "loradeck.engine.runs.progress",
    "loradeck.engine.data.files", "loradeck.engine.data.templates", "loradeck.engine.data.prep",
    "loradeck.engine.models.loading", "loradeck.engine.models.layout",
    "loradeck.engine.train.launch", "loradeck.engine.train.estimate",
    "loradeck.engine.train.preflight", "loradeck.engine.serve.client",
    "loradeck.engine.serve.target", "loradeck.engine.publish.merge",
    "loradeck.engine.publish.hub", "loradeck.engine.system.doctor",
)

SCRIPT = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    import loradeck.tui

    modules = [m.name for m in pkgutil.walk_packages(loradeck.tui.__path__, "loradeck.tui.")]
    for name in modules + {light!r}:
        importlib.import_module(name)
    from loradeck.engine.data import files
    from loradeck.engine.train import estimate
    assert files.preview("demo").ok
    estimate.estimate(estimate.shape_for("demo:tiny"), estimate.Settings())
    from loradeck.tui.app import LoradeckApp

    async def look_around(pilot):
        app = pilot.app
        for _ in range(2):
            await pilot.pause(0.2)
            await app.workers.wait_for_complete()
        app.exit(type(app.screen).__name__)

    shown = LoradeckApp(demo=True).run(headless=True, size=(100, 32), auto_pilot=look_around)
    heavy = sorted(m for m in {heavy!r} if m in sys.modules)
    print(json.dumps({{"screen": shown, "modules": len(modules), "heavy": heavy}}))
""")


def test_the_app_and_light_engine_modules_import_nothing_heavy(tmp_path):
    script = SCRIPT.format(light=list(LIGHT_ENGINE), heavy=HEAVY)
    env = dict(os.environ, LORADECK_HOME=str(tmp_path / "home"))
    env.pop("PYTHONPATH", None)  # the installed package, as a user has it
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["screen"] == "ModelScreen" and result["modules"] > 30
    assert result["heavy"] == [], f"imported by the app or a light module: {result['heavy']}"


def test_import_linter_contracts_hold():
    lint = shutil.which("lint-imports")
    assert lint, "import-linter is part of the test extra"
    out = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 kept, 0 broken" in out.stdout


def test_the_package_is_one_loradeck_namespace(tmp_path):
    """Installed, the folders are loradeck.engine, loradeck.tui and loradeck.themes; outside
    the checkout no top-level engine, tui or themes module exists."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    code = ("import importlib.util, json; print(json.dumps({n: importlib.util.find_spec(n) "
            "is not None for n in ('engine', 'tui', 'themes', 'loradeck.engine', "
            "'loradeck.tui', 'loradeck.themes')}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    found = json.loads(out.stdout)
    assert found == {"engine": False, "tui": False, "themes": False, "loradeck.engine": True,
                     "loradeck.tui": True, "loradeck.themes": True}, found
    assert {m.name for m in pkgutil.iter_modules([str(ROOT / "engine")])} >= {
        "runs", "data", "models", "train", "serve", "publish", "system", "patches", "quant"}
    # every folder with an __init__.py is a package the install names
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    on_disk = {"loradeck." + ".".join(p.parent.relative_to(ROOT).parts)
               for top in ("engine", "tui", "themes") for p in (ROOT / top).rglob("__init__.py")}
    assert on_disk <= listed, sorted(on_disk - listed)


def test_opening_the_app_builds_no_subcommand_parser():
    """``loradeck`` and ``loradeck --demo`` parse with the top-level parser alone: the
    subcommands' modules (and the config, pydantic and yaml they import) would cost the first
    frame a quarter of a second. A subcommand still gets its full parser."""
    script = textwrap.dedent("""
        import json, sys
        from loradeck.tui import cli
        for argv in ([], ["--demo"], ["--debug", "--demo"]):
            args = cli.parse(argv)
            assert args.command is None and args.demo == ("--demo" in argv)
        loaded = [m for m in ("loradeck.tui.commands.chat", "loradeck.engine.config",
                              "pydantic", "yaml") if m in sys.modules]
        args = cli.parse(["status", "x"])
        print(json.dumps({"loaded": loaded, "command": args.command}))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, check=True, cwd=ROOT).stdout
    assert json.loads(out) == {"loaded": [], "command": "status"}
