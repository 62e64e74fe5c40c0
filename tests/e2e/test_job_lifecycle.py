"""A run's life: kill -9 then resume from the last complete checkpoint, stop, out-of-memory
retry, a disk that fills up before a save, and the refusals of stop and resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
import yaml

from loradeck.engine import config as cfg
from loradeck.engine.runs import lock as joblock
from loradeck.engine.runs.events import EventWriter
from loradeck.engine.runs.store import COMPLETE_MARKER, RunStore
from tests.conftest import ROOT, run_cli
from tests.helpers.jobs import (
    JOB_ENV,
    adapter_checksum,
    assert_schema,
    losses,
    of_type,
    phases,
    run_log,
    wait_for,
)


def _start(*sets: str, env: dict | None = None) -> str:
    args = ["train", "demo", "--detach"]
    for item in sets:
        args += ["--set", item]
    r = run_cli(args, env={**JOB_ENV, **(env or {})})
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[0]


@pytest.mark.slow
def test_kill9_then_resume_continues_from_the_last_complete_checkpoint_then_stop(demo_model):
    run_id = _start("training.max_steps=300", "training.save_steps=5", "training.logging_steps=1",
                    "training.eval_steps=1000", "training.learning_rate=0.002",
                    "training.warmup_ratio=0")
    run = RunStore().resolve(run_id)
    wait_for(lambda: of_type(run.events(), "checkpoint"), 300, "a first checkpoint")
    os.kill(run.state()["pid"], signal.SIGKILL)  # mid-run, with a complete checkpoint on disk
    wait_for(lambda: not run.alive(), 30, "the killed job to go")
    before = run.events()
    assert phases(before)[-1] == "training"  # no final status: it was killed
    assert run.summary()["phase"] == "failed" and run.summary()["interrupted"]
    complete = run.latest_checkpoint()
    c = int(complete.name.split("-")[1])
    # a checkpoint cut off mid-write at a higher step: no completeness marker, a torn file
    torn = run.checkpoints_dir / f"checkpoint-{c + 100}"
    torn.mkdir()
    shutil.copy(complete / "adapter_config.json", torn)
    (torn / "adapter_model.safetensors").write_bytes(
        (complete / "adapter_model.safetensors").read_bytes()[:100])
    assert run.latest_checkpoint() == complete
    loss_before = dict(losses(before))

    r = run_cli(["resume", run_id[:14], "--detach"], env=JOB_ENV)
    assert r.returncode == 0, r.stderr
    new = lambda: run.events()[len(before):]  # noqa: E731
    wait_for(lambda: len(losses(new())) >= 3, 300, "metrics after the resume")
    resumed = [ev for ev in of_type(new(), "log") if ev.get("resumed_from")]
    assert len(resumed) == 1, run_log(run)[-3000:]
    assert resumed[0]["resumed_from"] == str(complete) and resumed[0]["step"] == c
    # the adapter weights in the job after loading equal the checkpoint's file
    assert resumed[0]["adapter_checksum"] == pytest.approx(adapter_checksum(complete), rel=1e-9)
    assert any(f"removed checkpoint-{c + 100}" in ev["text"] for ev in of_type(new(), "log"))
    assert not torn.exists()
    after = losses(new())
    assert [s for s, _ in after[:3]] == [c + 1, c + 2, c + 3]  # the global step continues
    # the loss goes on from where it was, not from where a fresh adapter starts
    assert abs(after[0][1] - loss_before[c]) < abs(after[0][1] - loss_before[1]), \
        (loss_before, after)
    if c + 1 in loss_before:  # optimizer, scheduler, RNG and data order restored: same loss
        assert after[0][1] == pytest.approx(loss_before[c + 1], abs=1e-3)

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    follower = subprocess.Popen([sys.executable, "-m", "loradeck.tui.cli", "logs", run_id, "--follow"],
                                env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    r = run_cli(["stop", run_id, "--wait"], env=JOB_ENV, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"run {run_id}: stopped" in r.stdout
    events = run.events()
    assert_schema(events)
    assert phases(events)[-2:] == ["stopping", "stopped"]
    stop_step = int(of_type(events, "status")[-2]["message"].rsplit(" ", 1)[1])
    assert stop_step > c
    last_cp = of_type(events, "checkpoint")[-1]
    assert last_cp["step"] == stop_step
    assert (run.checkpoints_dir / f"checkpoint-{stop_step}" / COMPLETE_MARKER).is_file()
    assert run.latest_checkpoint().name == f"checkpoint-{stop_step}"
    s = run.summary()
    assert (s["phase"], s["alive"]) == ("stopped", False)
    followed, _ = follower.communicate(timeout=60)  # `logs --follow` ends with the run
    assert follower.returncode == 0
    assert f"step {c + 1}/300  loss" in followed and "stopping: stop requested" in followed
    assert followed.rstrip().endswith(f"--- run {run_id}: stopped ---")
    assert run.state()["phase"] == "stopped" and not (run.dir / "stop.request").exists()


@pytest.mark.slow
def test_out_of_memory_is_reported_and_retried_with_half_the_micro_batch(demo_model):
    """Followed with `loradeck train`, which Ctrl-C detaches from; the run goes on, meets an
    (injected) out-of-memory error and retries with half the micro-batch."""
    args = ["train", "demo"]
    for item in ("training.max_steps=12", "training.save_steps=4", "training.logging_steps=1",
                 "training.eval_steps=1000", "training.batch_size=4", "training.grad_accum=1"):
        args += ["--set", item]
    env = dict(os.environ, **JOB_ENV, LORADECK_INJECT_OOM_AT_STEP="6")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cli = subprocess.Popen([sys.executable, "-m", "loradeck.tui.cli", *args], env=env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = cli.stdout.readline()
    assert " started (" in first, first + cli.stdout.read()
    run = RunStore().resolve(first.split("run ", 1)[1].split(" started", 1)[0])
    assert cli.stdout.readline().startswith("queued: ")  # printed while following
    cli.send_signal(signal.SIGINT)  # Ctrl-C while following: detach only
    out, _ = cli.communicate(timeout=60)
    assert cli.returncode == 0, out
    assert f"detached: run {run.id} keeps going. Reattach with: loradeck logs {run.id}" in out
    assert run.alive()

    wait_for(lambda: not run.alive(), 400, "the run to end")
    events = run.events()
    assert_schema(events)
    assert phases(events)[-1] == "done", run_log(run)[-3000:]
    err = of_type(events, "error")[0]
    assert (err["kind"], err["micro_batch"], err["grad_accum"], err["max_length"]) == \
        ("oom", 4, 1, 256)
    assert err["message"].startswith("out of memory at step 6 with micro-batch 4 x max_length 256")
    assert err["retrying"] is True and err["memory_gb"] > 0 and err["step"] == 6
    assert "training.batch_size 2 and training.grad_accum 2" in err["hint"]
    retry = [ev for ev in of_type(events, "log") if ev.get("batch_size") == 2]
    assert retry and retry[0]["grad_accum"] == 2 and "checkpoint-4" in retry[0]["text"]
    later = events[events.index(err):]
    assert [ev["resumed_from"] for ev in of_type(later, "log") if ev.get("resumed_from")] == \
        [str(run.checkpoints_dir / "checkpoint-4")]
    info = of_type(later, "info")[0]
    assert (info["batch_size"], info["grad_accum"], info["effective_batch"]) == (2, 2, 4)
    assert [s for s, _ in losses(later)] == list(range(5, 13))
    assert of_type(events, "done")
    saved = yaml.safe_load(run.config_path.read_text())["training"]
    assert (saved["batch_size"], saved["grad_accum"]) == (2, 2)


def test_full_disk_before_a_save_fails_in_words_and_keeps_the_last_checkpoint(
        demo_model, monkeypatch):
    """The job checks free disk before each save (LORADECK_FAKE_FREE_GB stands in for a disk
    that fills up once the first checkpoint is written)."""
    from loradeck.engine.train import callbacks, disk, job

    class DiskFillsAfterFirstSave(callbacks.CheckpointCallback):
        def on_save(self, args, state, control, **kwargs):
            control = super().on_save(args, state, control, **kwargs)
            monkeypatch.setenv(disk.FAKE_ENV, "0.000001")
            return control

    monkeypatch.setattr(callbacks, "CheckpointCallback", DiskFillsAfterFirstSave)
    monkeypatch.delenv(disk.FAKE_ENV, raising=False)
    config = cfg.from_overrides(["training.max_steps=8", "training.save_steps=2",
                                 "training.logging_steps=1", "training.eval_steps=1000"],
                                base=cfg.demo_config())
    run = RunStore().create(config)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        assert job.main([str(run.dir)]) == 1
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    events = run.events()
    assert_schema(events)
    err = of_type(events, "error")[-1]
    assert err["kind"] == "disk"
    assert "not enough free disk for checkpoint-4" in err["message"]
    assert "resume" in err["hint"]
    assert phases(events)[-1] == "failed" and run.state()["phase"] == "failed"
    assert [ev["step"] for ev in of_type(events, "checkpoint")] == [2]
    assert run.latest_checkpoint() == run.checkpoints_dir / "checkpoint-2"
    assert not (run.checkpoints_dir / "checkpoint-4").exists()
    from safetensors.torch import load_file

    assert load_file(str(run.checkpoints_dir / "checkpoint-2" / "adapter_model.safetensors"))


def test_stop_and_resume_refuse_what_they_cannot_do(loradeck_home):
    store = RunStore()
    finished = store.create(cfg.demo_config())
    ev = EventWriter(finished.events_path)
    ev.status("training", "training")
    ev.status("done", "training finished")
    r = run_cli(["stop", finished.id])
    assert r.returncode != 0
    assert r.stderr.strip() == f"loradeck: run {finished.id} is not running (phase done)"
    r = run_cli(["resume", finished.id])
    assert r.returncode == 2 and "already finished" in r.stderr
    assert "Traceback" not in r.stderr

    alive = store.create(cfg.demo_config())
    alive.mark_process(os.getpid())  # this test process stands in for a running job
    joblock.acquire(alive.dir, alive.id)
    r = run_cli(["resume", alive.id])
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == f"loradeck: {alive.id} is already running " \
        f"(pid {os.getpid()}) (follow it with: loradeck logs {alive.id} --follow)"
    joblock.release(alive.dir)
    r = run_cli(["stop", "nope"])
    assert r.returncode == 2 and "no run matches 'nope'" in r.stderr
