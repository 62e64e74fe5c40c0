"""Shared fixtures: an isolated, offline environment and demo:tiny built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Offline and isolated for every test and every process a test starts.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HUGGING_FACE_HUB_TOKEN", None)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session", autouse=True)
def _session_env(session_dir: Path):
    """One demo cache and one HF home for the whole session."""
    os.environ["LORADECK_CACHE"] = str(session_dir / "cache")
    os.environ["HF_HOME"] = str(session_dir / "hf-home")
    os.environ["LORADECK_HOME"] = str(session_dir / "home")
    yield


@pytest.fixture(autouse=True)
def loradeck_home(tmp_path: Path, monkeypatch) -> Path:
    """Each test gets its own run store."""
    home = tmp_path / "loradeck-home"
    monkeypatch.setenv("LORADECK_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def demo_model(_session_env) -> Path:
    """The demo:tiny directory, built once per session."""
    from loradeck.engine.models import demo

    return demo.ensure()


@pytest.fixture(scope="session")
def cli_env() -> dict[str, str]:
    """Environment for subprocesses that run the CLI."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 300, **kw):
    """Run ``loradeck ARGS`` as a subprocess the way a user would; returns CompletedProcess."""
    import subprocess

    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "loradeck.tui.cli", *args], env=e, cwd=kw.pop("cwd", None),
                          capture_output=True, text=True, timeout=timeout, **kw)


def teardown_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """(env, dir): processes started with ``env`` leave ``dir/<pid>`` when their interpreter's
    teardown runs (see tests/teardown_probe), so a test can tell which skipped it."""
    torn = tmp_path / "teardowns"
    torn.mkdir(exist_ok=True)
    probe = str(ROOT / "tests" / "teardown_probe")
    path = os.pathsep.join([str(ROOT), probe, os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path, "LORADECK_TEST_TEARDOWN_DIR": str(torn)}, torn
