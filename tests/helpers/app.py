"""Helpers for the app's Pilot and snapshot tests: run directories with fixed events, waiting for
a condition while the app runs, and the screen as plain text."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loradeck.engine import config as cfg
from loradeck.engine.runs import lock as joblock
from loradeck.engine.runs.store import Run, process_start_time
from tests.conftest import ROOT

T0 = 1_700_000_000.0


def small_demo_config(**training: Any) -> cfg.Config:
    """The demo config, trained for 10 steps with a loss at every step (fast on a CPU)."""
    values = {"max_steps": 10, "logging_steps": 1, "eval_steps": 5, "save_steps": 5}
    values.update(training)
    return cfg.from_overrides([f"training.{k}={v}" for k, v in values.items()],
                              base=cfg.demo_config())


def training_events(steps: int = 12, max_steps: int = 12, eval_every: int = 4,
                    end: str | None = "done", t0: float = T0) -> list[dict[str, Any]]:
    """The events a training job writes, with fixed times and losses (deterministic)."""
    evs: list[dict[str, Any]] = [
        {"t": t0, "type": "status", "phase": "queued", "message": "run created"},
        {"t": t0 + 2, "type": "status", "phase": "loading", "message": "loading demo:tiny on cpu"},
        {"t": t0 + 3, "type": "info", "trainable_parameters": 65536,
         "total_parameters": 597888, "device": "cpu", "train_rows": 45, "eval_rows": 5},
        {"t": t0 + 3, "type": "status", "phase": "training", "message": "training on cpu"},
    ]
    loss = None
    for step in range(1, steps + 1):
        t = t0 + 3 + step
        loss = round(6.9 - 0.35 * step + 0.05 * (step % 3), 4)
        evs.append({"t": t, "type": "metrics", "step": step, "max_steps": max_steps,
                    "epoch": round(step / max_steps, 4), "loss": loss,
                    "learning_rate": round(2e-4 * (1 - step / (max_steps + 1)), 8),
                    "grad_norm": 2.5, "tokens_per_second": 812.0, "memory_gb": 0.61,
                    "eta_seconds": float(max_steps - step)})
        if step % 3 == 0:  # the job's machine samples
            evs.append({"t": t + 0.2, "type": "system", "cpu_percent": 150.0 + 10 * (step % 5),
                        "ram_used_gb": round(3.0 + 0.1 * step, 2), "ram_total_gb": 25.3,
                        "process_ram_gb": 0.61})
        if step == 8 and eval_every and step % eval_every == 0:  # the job's sample answers
            evs.append({"t": t + 0.55, "type": "samples", "step": step, "seconds": 0.4,
                        "samples": [{"prompt": "프랑스의 수도는 어디인가요?",
                                     "answer": "프랑스의 수도는 파리입니다.",
                                     "reference": "프랑스의 수도는 파리입니다."},
                                    {"prompt": "What is the capital of Japan?",
                                     "answer": "The capital of Japan is Kyoto.",
                                     "reference": "The capital of Japan is Tokyo."}]})
        if step % eval_every == 0:
            evs.append({"t": t + 0.5, "type": "metrics", "step": step, "max_steps": max_steps,
                        "eval_loss": round(loss + 0.12, 4)})
            evs.append({"t": t + 0.6, "type": "checkpoint", "step": step,
                        "path": f"checkpoints/checkpoint-{step}"})
    t_end = t0 + 4 + steps
    if end == "done":
        evs += [{"t": t_end, "type": "status", "phase": "saving", "message": "saving the adapter"},
                {"t": t_end, "type": "done", "adapter": "adapter", "train_loss": loss,
                 "runtime_s": 16.0},
                {"t": t_end, "type": "status", "phase": "done", "message": "training finished"}]
    elif end == "stopped":
        evs += [{"t": t_end, "type": "status", "phase": "stopped",
                 "message": f"stopped at step {steps}"}]
    elif end == "failed":
        evs += [{"t": t_end, "type": "error", "kind": "oom",
                 "message": "out of GPU memory at step 5", "hint": "lower training.batch_size"},
                {"t": t_end, "type": "status", "phase": "failed", "message": "out of memory"}]
    return evs


def write_run(home: Path, run_id: str, events: list[dict[str, Any]], *,
              config: cfg.Config | None = None, alive: bool = False, created: float = 0.0,
              state: dict[str, Any] | None = None) -> Run:
    """A run directory under ``home`` with these events (``alive``: this process as its job)."""
    run = Run(home / "runs" / run_id)
    run.dir.mkdir(parents=True, exist_ok=True)
    cfg.save(config or cfg.demo_config(), run.config_path)
    st = {"phase": "queued", "created": created or T0, "model": "demo:tiny", "dataset": "demo"}
    if alive:
        st.update(pid=os.getpid(), start_time=process_start_time(os.getpid()))
        joblock.acquire(run.dir, run_id)  # held until this process ends, as a job holds it
    st.update(state or {})
    run.state_path.write_text(json.dumps(st), encoding="utf-8")
    run.events_path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events),
                               encoding="utf-8")
    return run


def copy_run(src: Run | Path, home: Path, run_id: str) -> Run:
    """A copy of a run directory under ``home`` with a fixed id."""
    src_dir = src.dir if isinstance(src, Run) else Path(src)
    dest = home / "runs" / run_id
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src_dir, dest)
    return Run(dest)


def screen_text(app) -> str:
    """What the app's current screen shows, as plain text."""
    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False,
                      safe_box=False)
    console.print(app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens))
    return console.export_text()


async def wait_for(pilot, predicate: Callable[[], Any], timeout: float, what: str,
                   step: float = 0.1) -> Any:
    """Let the app run until ``predicate()`` is truthy; fail with the screen after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; "
                                 f"screen:\n{screen_text(pilot.app)}")
        await pilot.pause(step)


def no_blink(app) -> None:
    """Stop every Input's cursor from blinking (a blink would make snapshots differ)."""
    from textual.widgets import Input

    for screen in [app.screen, *app.screen_stack]:
        for field in screen.query(Input):
            field.cursor_blink = False


def app_env(home: Path) -> dict[str, str]:
    """The environment of an app started as a process: this checkout importable, its own
    LORADECK_HOME."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["LORADECK_HOME"] = str(home)
    return env


@pytest.fixture(autouse=True)
def same_on_every_machine(monkeypatch, tmp_path_factory):
    """No nvidia-smi lookup, and a Hugging Face cache of the test's own (the client freezes
    its cache path when first imported, which may be before the tests set HF_HOME)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _cache_manager

    from loradeck.tui.screens import lora

    monkeypatch.setattr(lora, "gpu_free_gb", lambda: None)
    cache = tmp_path_factory.mktemp("hf-cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", str(cache))


async def settle(pilot, rounds: int = 3) -> None:
    """Let workers (scans, reading, rendering) finish and the screen redraw."""
    app = pilot.app
    for _ in range(200):  # the Model screen builds itself right after the first frame
        if getattr(app.screen, "ready", True):
            break
        await pilot.pause(0.05)
    for _ in range(rounds):
        await pilot.pause(0.05)
        await app.workers.wait_for_complete()
    await pilot.pause()


async def focus_by_tab(pilot, widget_id: str, presses: int = 20) -> None:
    """Press tab until the widget ``#widget_id`` has focus (keys only, as a user would)."""
    for _ in range(presses):
        focused = pilot.app.screen.focused
        if focused is not None and focused.id == widget_id:
            return
        await pilot.press("tab")
    raise AssertionError(f"could not reach #{widget_id} with tab")


async def open_push_screen(pilot):
    """The Push screen, once it has read the run."""
    from loradeck.tui.screens.push import PushScreen

    await pilot.press("p")
    screen = pilot.app.screen
    assert isinstance(screen, PushScreen)
    await wait_for(pilot, lambda: screen.summary.get("has_adapter"), 60, "the run")
    return screen
