"""The machine during a run: system events (NVML on a GPU machine, psutil elsewhere) written by
the job every few seconds, rebuilt on attach, shown by `loradeck status` and on the Train
screen's panel."""

from __future__ import annotations

import asyncio
import sys
import types

import pytest

from loradeck.engine.system import sampler
from tests.conftest import run_cli
from tests.helpers.event_schema import check_event
from tests.helpers.jobs import JOB_ENV, of_type


def _fake_nvml(monkeypatch, count: int = 2) -> None:
    """An NVML that reports ``count`` GPUs with fixed readings (no GPU here)."""
    nvml = types.SimpleNamespace(
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: count,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=87 - 10 * h),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=21.3e9, total=24.0e9),
        nvmlDeviceGetTemperature=lambda h, kind: 71,
        nvmlDeviceGetPowerUsage=lambda h: 285_000)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)


def test_a_gpu_machine_is_sampled_through_nvml(monkeypatch):
    _fake_nvml(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    ev = sampler.sample()
    assert ev == {"gpus": [{"index": 1, "util": 77, "mem_used_gb": 21.3, "mem_total_gb": 24.0,
                            "temp_c": 71, "power_w": 285.0}]}
    assert sampler.describe(ev) == "GPU1 77% · 21.3/24.0 GB · 71°C · 285 W"
    assert sampler.utilisation(ev) == 77 and sampler.memory_used(ev) == 21.3


def test_a_machine_without_a_gpu_is_sampled_through_psutil(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails: no nvidia-ml-py
    ev = sampler.sample()
    assert set(ev) == {"cpu_percent", "ram_used_gb", "ram_total_gb", "process_ram_gb"}
    assert 0 < ev["ram_used_gb"] <= ev["ram_total_gb"] and ev["process_ram_gb"] > 0
    assert sampler.describe(ev).startswith("CPU ") and " GB" in sampler.describe(ev)


@pytest.fixture(scope="module")
def sampled_run(demo_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("system-home")
    env = {**JOB_ENV, "LORADECK_HOME": str(home), sampler.INTERVAL_ENV: "0.2"}
    r = run_cli(["train", "demo", "--set", "training.max_steps=40",
                 "--set", "training.logging_steps=5"], env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return home, next((home / "runs").iterdir()), env


def test_the_job_writes_system_events_and_status_prints_the_last(sampled_run):
    import json

    home, run_dir, env = sampled_run
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    system = of_type(events, "system")
    assert len(system) >= 2, [e["type"] for e in events]
    assert all(not check_event(e) for e in system)
    assert all("cpu_percent" in e and e["ram_total_gb"] > 0 for e in system)
    last_status = max(i for i, e in enumerate(events) if e["type"] == "status")
    assert all(events.index(e) < last_status for e in system)  # none after the closing status
    r = run_cli(["status", run_dir.name], env=env)
    assert r.returncode == 0
    machine = next(line for line in r.stdout.splitlines() if line.startswith("machine"))
    assert "CPU " in machine and "RAM " in machine and "s ago" in machine
    r = run_cli(["status", run_dir.name, "--json"], env=env)
    assert json.loads(r.stdout)["system"]["cpu_percent"] == system[-1]["cpu_percent"]


def test_the_train_screen_shows_the_machine_rebuilt_from_events(sampled_run, monkeypatch):
    import json

    from textual.widgets import Label, Sparkline

    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.widgets.system_panel import SystemPanel
    from tests.helpers.app import wait_for

    home, run_dir, _ = sampled_run
    monkeypatch.setenv("LORADECK_HOME", str(home))
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    samples = of_type(events, "system")

    async def main():
        app = LoradeckApp(run_id=run_dir.name)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("t")
            screen = app.screen
            await wait_for(pilot, lambda: getattr(screen, "drawn", False), 60, "the run")
            panel = screen.query_one(SystemPanel)
            text = str(panel.query_one("#system-text", Label).render())
            assert text == sampler.describe(samples[-1])
            assert list(panel.query_one("#system-use", Sparkline).data) == [
                sampler.utilisation(e) for e in samples][-60:]
            assert list(panel.query_one("#system-mem", Sparkline).data) == [
                sampler.memory_used(e) for e in samples][-60:]

    asyncio.run(main())
