"""Helpers of the tests that start jobs: the thread settings, waiting, and reading events."""

from __future__ import annotations

import time
from pathlib import Path

from loradeck.engine.runs.store import Run
from tests.helpers.event_schema import check_event

JOB_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def wait_for(predicate, timeout: float, what: str, poll: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def of_type(events: list[dict], typ: str) -> list[dict]:
    return [ev for ev in events if ev.get("type") == typ]


def phases(events: list[dict]) -> list[str]:
    return [ev["phase"] for ev in of_type(events, "status")]


def losses(events: list[dict]) -> list[tuple[int, float]]:
    return [(ev["step"], ev["loss"]) for ev in of_type(events, "metrics") if "loss" in ev]


def assert_schema(events: list[dict]) -> None:
    assert events
    for ev in events:
        assert check_event(ev) == [], ev


def adapter_checksum(path: Path) -> float:
    """The same sum the job reports after loading a checkpoint, from the file itself."""
    from safetensors.torch import load_file

    tensors = load_file(str(path / "adapter_model.safetensors"))
    return round(sum(float(t.double().abs().sum()) for _, t in sorted(tensors.items())), 6)


def run_log(run: Run) -> str:
    return run.log_path.read_text(errors="replace") if run.log_path.exists() else ""
