"""The app in a real terminal (tmux): start a run by keys, kill the terminal session, find the
job still training, reopen the app with ``loradeck attach RUN`` and see the run's history, then
stop it by keys."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from loradeck.engine import config as cfg
from loradeck.engine.runs.events import read_events
from loradeck.engine.runs.store import RunStore, pid_alive
from tests.helpers.app import small_demo_config

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]


class Tmux:
    """One detached tmux session running a command, read with capture-pane."""

    def __init__(self, name: str, command: str, env: dict[str, str], size=(100, 32)) -> None:
        self.name = name
        self.env = env
        self._tmux("new-session", "-d", "-s", name, "-x", str(size[0]), "-y", str(size[1]),
                   command)

    def _tmux(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", *args], env=self.env, capture_output=True, text=True,
                              timeout=30)

    def alive(self) -> bool:
        return self._tmux("has-session", "-t", self.name).returncode == 0

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.name).stdout

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.name, *keys)

    def wait_for(self, predicate, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if predicate(text):
                return text
            if time.monotonic() > deadline or not self.alive():
                raise AssertionError(f"waited {timeout:.0f}s for {what}; the terminal shows:\n"
                                     f"{text}")
            time.sleep(0.3)

    def kill(self) -> None:
        self._tmux("kill-session", "-t", self.name)


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.3)


def test_run_survives_the_terminal_and_attach_shows_its_history(loradeck_home, demo_model):
    env = dict(os.environ)
    env.update(LORADECK_HOME=str(loradeck_home), OMP_NUM_THREADS="1", TERM="xterm-256color",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
               TMUX_TMPDIR=tempfile.mkdtemp(prefix="ldtmux-"))  # a tmux server of our own
    env.pop("TMUX", None)
    # the draft the app opens with: demo model and data, long enough to stop it midway
    cfg.save(small_demo_config(max_steps=3000, save_steps=500, eval_steps=100),
             loradeck_home / "draft.yaml")
    app_cmd = f"cd {ROOT} && exec {sys.executable} -m loradeck.tui.cli"
    tag = uuid.uuid4().hex[:8]
    sessions: list[Tmux] = []
    store = RunStore(loradeck_home / "runs")
    try:
        first = Tmux(f"loradeck-a-{tag}", app_cmd, env)
        sessions.append(first)
        first.wait_for(lambda s: "Model" in s and "Train" in s, 60, "the app")
        first.keys("t")
        first.wait_for(lambda s: "Press s to start a run" in s, 20, "the Train screen")
        first.keys("s")
        runs = _wait(lambda: store.list(), 60, "the run directory")
        run = runs[0]
        first.wait_for(lambda s: f"Run {run.id}" in s, 30, "the run on screen")
        _wait(lambda: run.state().get("pid"), 30, "the job's pid")
        state = run.state()

        first.kill()  # the terminal goes away, and the app with it
        _wait(lambda: not first.alive(), 10, "the tmux session to end")
        assert pid_alive(state["pid"], state.get("start_time")), "the job died with the terminal"

        # the job keeps training with no terminal: losses keep arriving in events.jsonl
        def losses():
            return [e for e in read_events(run.events_path)
                    if e.get("type") == "metrics" and e.get("loss") is not None]

        _wait(lambda: len(losses()) >= 2, 300, "losses from the job")
        assert run.alive()

        second = Tmux(f"loradeck-b-{tag}", f"{app_cmd} attach {run.id[:-2]}", env)
        sessions.append(second)

        def shows_logged_losses(screen: str) -> bool:
            """The log and the loss table show losses the job wrote (the latest ones fit)."""
            values = {f"{e['loss']:.4f}" for e in losses()}
            in_log = [v for v in values if f"loss {v}" in screen]
            in_table = [v for v in values if any(line.count(v) and "loss" not in line
                                                 for line in screen.splitlines())]
            return bool(in_log) and bool(in_table)

        def shows_history(screen: str) -> bool:
            # the whole frame: title, sparkline label, progress, and losses in log and table
            return (f"Run {run.id}" in screen and "train " in screen and "min " in screen
                    and "/3000" in screen and shows_logged_losses(screen))

        second.wait_for(shows_history, 60, "the run's history")

        second.keys("x")  # graceful stop from the reattached app
        _wait(lambda: not run.alive(), 120, "the job to stop")
        phases = [e.get("phase") for e in read_events(run.events_path)
                  if e.get("type") == "status"]
        assert phases[-1] in ("stopped", "done"), phases
        second.wait_for(lambda s: ("stopped" in s or "done:" in s), 30, "the final phase")
    finally:
        for s in sessions:
            s.kill()
        for run in store.list():
            st = run.state()
            if run.alive():
                try:
                    os.kill(int(st["pid"]), 9)
                except (ProcessLookupError, KeyError, ValueError):
                    pass
