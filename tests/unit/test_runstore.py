"""Run store and events file: ids and prefixes, liveness, complete checkpoints, torn lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loradeck.engine import config as cfg
from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs import lock as joblock
from loradeck.engine.runs.events import EventTail, EventWriter, read_events
from loradeck.engine.runs.store import COMPLETE_MARKER, RunStore
from tests.conftest import ROOT
from tests.helpers.event_schema import check_event


def test_create_resolve_and_prefix(loradeck_home):
    store = RunStore()
    a = store.create(cfg.from_overrides(["run.name=alpha"]))
    b = store.create(cfg.from_overrides(["run.name=alphabet"]))
    assert a.dir.parent == loradeck_home / "runs"
    assert cfg.load(a.config_path).run.name == "alpha"
    assert store.resolve(a.id).dir == a.dir
    assert store.resolve("alphab").dir == b.dir
    with pytest.raises(LoradeckError, match="matches 2 runs"):
        store.resolve("alpha")
    with pytest.raises(LoradeckError, match="no run matches 'zzz'"):
        store.resolve("zzz")
    assert [r.id for r in store.list()] == [a.id, b.id]


def test_only_complete_checkpoints_count(tmp_path):
    run = RunStore().create(cfg.Config())
    for step, complete in ((10, True), (20, True), (30, False)):
        d = run.checkpoints_dir / f"checkpoint-{step}"
        d.mkdir(parents=True)
        if complete:
            (d / COMPLETE_MARKER).write_text("{}")
    assert [p.name for p in run.checkpoints()] == ["checkpoint-10", "checkpoint-20"]
    assert run.latest_checkpoint().name == "checkpoint-20"


HOLD_LOCK = """
import sys, time
from loradeck.engine.runs import lock as joblock
joblock.acquire(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def test_liveness_is_the_job_lock_not_the_state_file():
    run = RunStore().create(cfg.Config())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        run.mark_process(sleeper.pid, phase="training")  # a live pid that holds no lock
        assert not run.alive()
    finally:
        sleeper.kill()
        sleeper.wait()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run.dir)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        run.state_path.write_bytes(b"\x00\xff garbage")  # state.json gone bad: still alive
        assert run.alive()
        with pytest.raises(joblock.AlreadyRunning, match=rf"already running \(pid {holder.pid}\)"):
            joblock.acquire(run.dir, run.id)
    finally:
        holder.kill()  # kill -9: the kernel releases the lock
        holder.wait()
    assert not run.alive()
    joblock.acquire(run.dir, run.id)
    joblock.release(run.dir)


def test_summary_marks_a_vanished_job_as_failed():
    run = RunStore().create(cfg.Config())
    w = EventWriter(run.events_path)
    w.status("training", "step 1")
    w.emit("metrics", step=3, max_steps=10, loss=2.5)
    w.emit("metrics", step=4, max_steps=10, eval_loss=2.7)
    run.update_state(pid=2**22 + 7, start_time=1)
    s = run.summary()
    assert s["phase"] == "failed" and s["interrupted"] and not s["alive"]
    assert (s["step"], s["max_steps"], s["loss"], s["eval_loss"]) == (4, 10, 2.5, 2.7)
    w.status("stopped", "saved")
    assert run.summary()["phase"] == "stopped"


def test_events_schema_and_torn_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    w = EventWriter(path)
    w.status("loading", "model")
    w.error("data", "rows.jsonl:3: malformed JSON", "fix line 3")
    w.emit("metrics", step=1, loss=1.0)
    w.log("안녕하세요")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"t": 1, "type": "log", "le')  # a writer cut off mid-line
    events = read_events(path)
    assert [e["type"] for e in events] == ["status", "error", "metrics", "log"]
    assert all(check_event(e) == [] for e in events)
    assert events[-1]["text"] == "안녕하세요"
    assert "안녕하세요" in path.read_text(encoding="utf-8")
    assert check_event({"t": 1, "type": "status", "phase": "bogus", "message": ""})
    assert check_event({"type": "metrics"})


def test_tail_returns_only_whole_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.poll() == []
    with open(path, "ab") as fh:
        fh.write(json.dumps({"t": 1, "type": "log", "level": "info", "text": "a"}).encode() + b"\n")
        fh.write(b'{"t": 2, "type": "log", "level": "info", "te')
    assert [e["text"] for e in tail.poll()] == ["a"]
    with open(path, "ab") as fh:
        fh.write(b'xt": "b"}\n')
    assert [e["text"] for e in tail.poll()] == ["b"]
    assert tail.poll() == []


def test_concurrent_writers_never_interleave(tmp_path):
    path = tmp_path / "events.jsonl"
    code = ("import sys; from loradeck.engine.runs.events import EventWriter; w = EventWriter(sys.argv[1]);"
            "[w.log('x' * 3000 + str(i)) for i in range(200)]")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], env=env) for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 600
    assert all(json.loads(line)["type"] == "log" for line in lines)


def test_a_run_that_ends_between_two_reads_never_reads_as_killed(loradeck_home, monkeypatch):
    """The job writes its last lines and exits at once (``loradeck.engine.system.process_exit``). Whoever
    follows it asks whether it is alive before reading the events, so a job found ended has
    written everything: ``loradeck status``, the runs list and the Train screen's poll then
    say done, never "ended without a final status" for the moment between the two reads."""
    from loradeck.engine.runs.events import EventTail
    from loradeck.engine.runs.store import Run
    from loradeck.tui.run_view import RunView
    from loradeck.tui.screens.train import read_once
    from tests.helpers.app import training_events, write_run

    events = training_events(steps=4, max_steps=4, eval_every=2)
    last = [i for i, ev in enumerate(events) if ev.get("phase") == "saving"][0]

    def job_finishing_as_asked(run: Run):
        def alive() -> bool:  # the job's last lines land, then it is gone
            if not any(ev.get("type") == "done" for ev in run.events()):
                with run.events_path.open("a", encoding="utf-8") as f:
                    f.writelines(json.dumps(ev) + "\n" for ev in events[last:])
            return False
        monkeypatch.setattr(run, "alive", alive)
        return run

    run = job_finishing_as_asked(write_run(loradeck_home, "ends-now", events[:last]))
    summary = run.summary()
    assert summary["phase"] == "done" and "without a final status" not in summary["message"]

    run = job_finishing_as_asked(write_run(loradeck_home, "ends-now-too", events[:last]))
    view, tail = RunView(), EventTail(run.events_path)
    events, alive = read_once(tail, run)
    delta = view.feed(events)
    assert not alive and view.phase == "done" and view.display_phase(alive) == "done"
    assert delta.phase_changed


def test_events_fold_in_one_place_for_the_store_the_cli_and_the_app():
    """The summary, the CLI's progress line and the Train view read the same events the same
    way, because all three fold through RunState."""
    from loradeck.engine.runs.progress import Progress
    from loradeck.engine.runs.state import RunState
    from loradeck.tui.run_view import RunView

    run = RunStore().create(cfg.Config())
    w = EventWriter(run.events_path)
    w.status("training", "go")
    w.emit("metrics", step=3, max_steps=9, loss=2.5, tokens_per_second=100.0)
    w.error("oom", "out of memory", "retrying", retrying=True)
    w.status("loading", "again")
    w.emit("checkpoint", step=4, path="p")
    w.emit("done", adapter="a", step=9, max_steps=9)
    events = run.events()
    prog, view = Progress(), RunView()
    for ev in events:
        prog.update(ev)
    view.feed(events)
    summary = run.summary(events)
    assert isinstance(prog, RunState) and isinstance(view, RunState)
    assert (summary["step"], summary["max_steps"]) == (prog.step, prog.max_steps) == \
        (view.step, view.max_steps) == (9, 9)
    assert summary["loss"] == prog.loss == view.loss == 2.5
    assert summary["phase"] == "done" and view.phase == "done"  # closing status torn off
    assert prog.error is None and view.error is None  # cleared by the new start
    assert summary["error"] == "out of memory"  # the last error written
