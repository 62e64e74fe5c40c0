"""Helpers of the queue's tests: a queue of its own (LORADECK_HOME) for each test, the
``loradeck queue`` command, its listing, and waiting for it to settle."""

from __future__ import annotations

import json
import os
import subprocess
import time

import psutil
import pytest

from loradeck.engine.runs.events import read_events
from tests.conftest import run_cli
from tests.helpers.jobs import JOB_ENV

SHORT = ["--set", "training.max_steps=2", "--set", "training.logging_steps=1"]


@pytest.fixture
def qenv(tmp_path):
    env = {**JOB_ENV, "LORADECK_HOME": str(tmp_path / "home"), "LORADECK_QUEUE_POLL_S": "0.3"}
    yield env
    for p in psutil.process_iter(["cmdline", "environ"]):  # nothing of this test left behind
        try:
            if (p.info["environ"] or {}).get("LORADECK_HOME") == env["LORADECK_HOME"]:
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def queue(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli(["queue", *args], env=env, timeout=timeout)


def listing(env: dict) -> dict:
    r = queue(env, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def processes(env: dict, module: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            if module in " ".join(p.info["cmdline"] or []) and \
                    (p.info["environ"] or {}).get("LORADECK_HOME") == env["LORADECK_HOME"]:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def wait_until_settled(env: dict, timeout: float = 300, sample=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sample:
            sample()
        data = listing(env)
        if not data["runner"]["alive"] and all(
                e["state"] not in ("queued", "starting", "running") for e in data["entries"]):
            return data
        time.sleep(0.3)
    raise AssertionError(f"the queue did not settle: {listing(env)}")


def starts(env: dict, run_id: str) -> int:
    """How many times the run's job started: its loading statuses."""
    events = read_events(os.path.join(env["LORADECK_HOME"], "runs", run_id, "events.jsonl"))
    return sum(1 for e in events if e.get("type") == "status" and e.get("phase") == "loading")


