"""``loradeck queue`` end to end on demo:tiny: a sweep runs one run at a time on this CPU, a
run that fails in its job does not stop the next, kill -9 on the runner trains no run twice,
adds and starts at the same instant, GPUs given out per run (a stand-in list of 4), and bad
input refused before anything is queued."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from loradeck.engine.evals import report
from loradeck.engine.runs.events import read_events
from tests.conftest import ROOT, run_cli
from tests.helpers.queue import (  # noqa: F401 - qenv is a fixture
    SHORT,
    listing,
    processes,
    qenv,
    queue,
    starts,
    wait_until_settled,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

def test_a_sweep_of_two_values_runs_one_at_a_time_on_the_cpu(qenv):
    r = queue(qenv, "add", "demo", *SHORT, "--sweep", "training.learning_rate=1e-4,3e-4",
              "--sweep-name", "lr", "--eval", "--eval-rows", "2")
    assert r.returncode == 0, r.stderr
    ids = r.stdout.split()
    assert len(ids) == 2 and "learning_rate-1e-4" in ids[0] and "learning_rate-3e-4" in ids[1]
    most, states = [], set()

    def sample() -> None:  # trainings and evaluations: one job at a time on this CPU
        most.append(len(processes(qenv, "loradeck.engine.train.job"))
                    + len(processes(qenv, "loradeck.engine.evals.job")))
        states.update(e["state"] for e in listing(qenv)["entries"])

    data = wait_until_settled(qenv, sample=sample)
    assert max(most) == 1 and len(most) > 3  # sampled while it ran: never two at once
    assert "evaluating" in states
    assert [(e["run"], e["state"], e["values"], e["sweep"]) for e in data["entries"]] == [
        (ids[0], "done", {"training.learning_rate": "1e-4"}, "lr"),
        (ids[1], "done", {"training.learning_rate": "3e-4"}, "lr")]
    for run_id, lr in zip(ids, (1e-4, 3e-4), strict=True):
        home = os.path.join(qenv["LORADECK_HOME"], "runs", run_id)
        state = json.load(open(os.path.join(home, "state.json")))
        assert state["sweep"] == "lr" and starts(qenv, run_id) == 1
        config = run_cli(["status", run_id, "--json"], env=qenv)
        assert config.returncode == 0 and json.loads(config.stdout)["phase"] == "done"
        assert f"learning_rate: {lr:g}" in open(os.path.join(home, "config.yaml")).read() or \
            f"learning_rate: {lr}" in open(os.path.join(home, "config.yaml")).read()
    r = queue(qenv)
    assert "done" in r.stdout and "learning_rate=1e-4" in r.stdout and "no runner" in r.stdout

    # each run was evaluated once trained; compare --sweep ranks them, the values as columns
    for run_id in ids:
        saved = report.latest(os.path.join(qenv["LORADECK_HOME"], "runs", run_id))
        assert [m["name"] for m in saved["models"]] == ["base", "adapter"]
        assert len(saved["rows"]) == 2
    r = run_cli(["compare", "--sweep", "lr", "--json"], env=qenv)
    assert r.returncode == 0, r.stderr
    ranking = json.loads(r.stdout)["sweep"]
    assert ranking["keys"] == ["training.learning_rate"] and ranking["evaluated"]
    rows = ranking["runs"]
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert [r["rank_eval_loss"] for r in rows] == [1, 2]
    assert rows[0]["eval_loss"] <= rows[1]["eval_loss"]
    assert {r["values"]["training.learning_rate"] for r in rows} == {"1e-4", "3e-4"}
    assert all(r["eval_chrf"] is not None and r["rank_eval_chrf"] in (1, 2) for r in rows)
    text = run_cli(["compare", "--sweep", "lr"], env=qenv).stdout
    header = text.splitlines()[1].split()
    assert header[:3] == ["rank", "run", "learning_rate"] and "chrF" in header
    assert text.splitlines()[2].split()[:2] == ["1", rows[0]["id"]]
    r = run_cli(["compare", "--sweep", "nope"], env=qenv)
    assert r.returncode == 2 and "no run belongs to a sweep named 'nope'" in r.stderr
    assert "sweeps: lr" in r.stderr


def test_a_run_that_fails_in_its_job_does_not_stop_the_next(qenv, tmp_path):
    assert queue(qenv, "stop").returncode == 0  # hold the queue while it is set up
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"q{i}", "response": f"a{i}"}) + "\n"
                            for i in range(20)), encoding="utf-8")
    first = queue(qenv, "add", "demo", *SHORT, "--set", f"dataset.path={data}")
    assert first.returncode == 0, first.stderr
    assert "the queue is stopped" in first.stdout
    second = queue(qenv, "add", "demo", *SHORT)
    data.unlink()  # checked when queued; gone when its job reads it
    assert queue(qenv, "start").returncode == 0
    settled = wait_until_settled(qenv)
    states = [e["state"] for e in settled["entries"]]
    assert states == ["failed", "done"], settled
    assert [e["run"] for e in settled["entries"]] == [first.stdout.split()[0],
                                                     second.stdout.split()[0]]


def test_kill_9_on_the_runner_then_queue_start_trains_no_run_twice(qenv):
    r = queue(qenv, "add", "demo", "--set", "training.max_steps=40", "--sweep",
              "lora.r=4,8")
    assert r.returncode == 0, r.stderr
    ids = r.stdout.split()
    deadline = time.monotonic() + 120
    while listing(qenv)["entries"][0]["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    runner = listing(qenv)["runner"]
    os.kill(runner["pid"], signal.SIGKILL)
    time.sleep(0.5)
    assert processes(qenv, "loradeck.engine.train.job")  # the run went on without it
    r = queue(qenv, "start")
    assert r.returncode == 0 and "runner pid" in r.stdout
    assert listing(qenv)["runner"]["pid"] != runner["pid"]
    data = wait_until_settled(qenv)
    assert [e["state"] for e in data["entries"]] == ["done", "done"]
    assert [starts(qenv, i) for i in ids] == [1, 1]


def test_a_reboot_leaves_the_queue_as_it_was_and_the_first_command_resumes_it(qenv):
    """Every process gone at once (the runner and the training job, as a power cut or a
    reboot leaves them): the queue's file is as it was; the first queue command starts a
    runner, which marks the cut-off run failed (interrupted) and trains the next; the cut-off
    run resumes from its last checkpoint."""
    r = queue(qenv, "add", "demo", "--set", "training.max_steps=300", "--set",
              "training.save_steps=5", "--sweep", "lora.r=4,8")
    assert r.returncode == 0, r.stderr
    cut, after = r.stdout.split()
    run_dir = os.path.join(qenv["LORADECK_HOME"], "runs", cut)
    deadline = time.monotonic() + 300
    while not any(e.get("type") == "checkpoint" for e in
                  read_events(os.path.join(run_dir, "events.jsonl"))):
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.2)
    for p in [*processes(qenv, "loradeck.engine.queue.runner"),
              *processes(qenv, "loradeck.engine.train.job")]:
        p.kill()  # SIGKILL: nothing runs its exit code, as with the power off
    psutil.wait_procs(processes(qenv, "loradeck"), timeout=30)
    assert not processes(qenv, "loradeck.engine")

    data = wait_until_settled(qenv)  # the first queue command wakes a runner
    assert [(e["run"], e["state"]) for e in data["entries"]] == [(cut, "failed"),
                                                                  (after, "done")]
    assert starts(qenv, after) == 1
    status = json.loads(run_cli(["status", cut, "--json"], env=qenv).stdout)
    assert status["phase"] == "failed" and status["interrupted"] is True
    r = run_cli(["resume", cut], env=qenv, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    resumed = [e for e in read_events(os.path.join(run_dir, "events.jsonl"))
               if e.get("type") == "log" and e.get("resumed_from")]
    assert len(resumed) == 1 and resumed[0]["step"] >= 5
    assert json.loads(run_cli(["status", cut, "--json"], env=qenv).stdout)["phase"] == "done"


def test_two_adds_and_two_starts_at_the_same_instant(qenv):
    assert queue(qenv, "stop").returncode == 0
    env = {**os.environ, **qenv,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "loradeck.tui.cli", "queue"]
    adds = [subprocess.Popen([*cmd, "add", "demo", *SHORT], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    ids = [i for p in adds for i in p.communicate(timeout=300)[0].split()
           if i.startswith("demo-tiny")]
    assert all(p.returncode == 0 for p in adds) and len(set(ids)) == 2
    assert sorted(e["run"] for e in listing(qenv)["entries"]) == sorted(ids)
    starts_at_once = [subprocess.Popen([*cmd, "start"], env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in starts_at_once:
        p.communicate(timeout=120)
        assert p.returncode == 0
    runners = [p for p in processes(qenv, "loradeck.engine.queue.runner") if p.is_running()
               and p.status() != psutil.STATUS_ZOMBIE]
    assert len(runners) <= 1
    data = wait_until_settled(qenv)
    assert [e["state"] for e in data["entries"]] == ["done", "done"]
    assert [starts(qenv, i) for i in ids] == [1, 1]


def test_gpus_are_given_out_per_run_and_never_shared(qenv):
    """A stand-in list of 4 GPUs (CUDA_VISIBLE_DEVICES) and queue.gpus_per_run 2: two runs go
    side by side on 0,1 and 2,3, the third waits for a pair."""
    env = {**qenv, "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    r = queue(env, "add", "demo", "--set", "training.max_steps=30", "--set",
              "queue.gpus_per_run=2", "--sweep", "lora.r=4,8,16")
    assert r.returncode == 0, r.stderr
    seen: list[list[tuple[str, tuple]]] = []

    def sample() -> None:
        now = listing(env)["entries"]
        seen.append([(e["run"], tuple(e["gpus"] or ())) for e in now if e["state"] == "running"])

    data = wait_until_settled(env, sample=sample)
    assert [e["state"] for e in data["entries"]] == ["done", "done", "done"]
    for running in seen:
        held = [g for _run, gpus in running for g in gpus]
        assert len(held) == len(set(held)) and len(running) <= 2  # no GPU shared
    assert max(len(r) for r in seen) == 2  # two side by side at some point
    given = [tuple(e["gpus"]) for e in data["entries"]]
    assert given[:2] == [("0", "1"), ("2", "3")] and given[2] in given[:2]
    state = json.load(open(os.path.join(env["LORADECK_HOME"], "runs", data["entries"][0]["run"],
                                        "state.json")))
    assert state["gpus"] == ["0", "1"]
    status = run_cli(["status", data["entries"][0]["run"]], env=env)
    assert "gpus       0,1" in status.stdout


def test_bad_input_is_refused_before_anything_is_queued(qenv, tmp_path):
    r = queue(qenv, "add", "demo", "--sweep", "training.learning_rate=1e-4,-5")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "learning_rate" in r.stderr
    r = queue(qenv, "add", "demo", "--sweep", "lr")
    assert r.returncode == 2 and "is not KEY=V1,V2" in r.stderr
    r = queue(qenv, "add", "demo", "--set", f"dataset.path={tmp_path / 'none.jsonl'}")
    assert r.returncode == 2
    assert listing(qenv)["entries"] == []
    assert not os.path.isdir(os.path.join(qenv["LORADECK_HOME"], "runs")) or \
        not os.listdir(os.path.join(qenv["LORADECK_HOME"], "runs"))
    r = queue(qenv, "rm", "nothing")
    assert r.returncode == 2 and "no entry of the queue" in r.stderr
