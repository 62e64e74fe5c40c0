"""The queue runner: ``python -m loradeck.engine.queue.runner``, a detached process in its own
session (like a training job) that starts the next queued run whenever a slot is free,
through the same launch path as ``train --detach``, until the queue is empty or stopped.

It holds $LORADECK_HOME/queue.lock (flock) for its whole life, so two runners never coexist:
a second one exits at once. Its state is the queue's SQLite file and the runs' own
directories, so a runner killed (even with kill -9) or a reboot loses nothing: the next
``loradeck queue`` command starts a runner again, which finds a live run through its job
lock and never starts it twice. ``ensure_running`` (light) is what the commands call.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from loradeck.engine.enums import QueueState
from loradeck.engine.errors import LoradeckError
from loradeck.engine.queue import slots
from loradeck.engine.queue.store import ACTIVE, QueueStore
from loradeck.engine.runs import paths, run_files
from loradeck.engine.runs.store import Run, pid_alive, process_start_time

LOCK_NAME = "queue.lock"
LOG_NAME = "queue.log"
STOPPED_FLAG = "stopped"
POLL_ENV = "LORADECK_QUEUE_POLL_S"
FINAL = {"done": QueueState.DONE, "merged": QueueState.DONE, "pushed": QueueState.DONE,
         "stopped": QueueState.STOPPED}


def lock_path() -> Path:
    return paths.home() / LOCK_NAME


def runner_status() -> dict[str, Any]:
    """The runner's pid (as it wrote it) and whether it holds the queue's lock now."""
    path = lock_path()
    try:
        fd = run_files.open_fd(path)
    except (OSError, LoradeckError):
        return {"pid": None, "alive": False}
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            alive = False
        except BlockingIOError:
            alive = True
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    pid = int(text) if text.isdigit() else None
    return {"pid": pid, "alive": alive and pid_alive(pid)}


def ensure_running() -> dict[str, Any]:
    """Start a runner unless one holds the lock (two at once: the second exits at once);
    returns the status."""
    status = runner_status()
    if status["alive"]:
        return status
    home = paths.home()
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with run_files.append_handle(home / LOG_NAME) as log:
        proc = subprocess.Popen([sys.executable, "-m", "loradeck.engine.queue.runner"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, env=env)
    threading.Thread(target=proc.wait, name="reap-queue-runner", daemon=True).start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until it (or a runner started beside it) holds it
        status = runner_status()
        if status["alive"] or proc.poll() is not None:
            break
        time.sleep(0.05)
    return runner_status()


def _run(store_root: Path, run_id: str) -> Run:
    return Run(store_root / run_id)


def reconcile(store: QueueStore, runs_root: Path, say) -> list[str]:
    """Each active entry as its run now is: alive (running), or ended (done, stopped,
    failed); an entry claimed by a runner killed before it started the job waits again.
    Returns the runs found ended. A run whose job was killed before its final status (so it
    told no one) is notified here."""
    ended: list[str] = []
    for entry in store.entries():
        if entry.state not in ACTIVE:
            continue
        run = _run(runs_root, entry.run_id)
        if not run.dir.is_dir():
            store.set_state(entry.run_id, QueueState.FAILED)
            say(f"{entry.run_id}: its run directory is gone")
            continue
        if entry.state == QueueState.EVALUATING:
            if not _evaluating(run, entry):
                store.set_state(entry.run_id, QueueState.DONE)
                ended.append(entry.run_id)
                say(f"{entry.run_id}: evaluated ({_eval_outcome(run)})")
            continue
        if run.alive():
            if entry.state == QueueState.STARTING:
                store.set_state(entry.run_id, QueueState.RUNNING)
            continue
        if entry.state == QueueState.STARTING and not run.events_path.exists():
            store.set_state(entry.run_id, QueueState.QUEUED)  # never launched: wait again
            continue
        summary = run.summary()
        phase = summary.get("phase")
        state = FINAL.get(str(phase), QueueState.FAILED)
        if state == QueueState.DONE and entry.eval is not None and _start_eval(store, run, entry,
                                                                                say):
            continue
        store.set_state(entry.run_id, state)
        ended.append(entry.run_id)
        say(f"{entry.run_id}: {state} (the run reads {phase})")
        if summary.get("interrupted"):
            _notify_run(run)
        if state == QueueState.FAILED and _stop_on_failure(run):
            store.set_flag(STOPPED_FLAG, "1")
            say(f"the queue stops: {entry.run_id} failed and its queue.stop_on_failure is on")
    return ended


def _start_eval(store: QueueStore, run: Run, entry, say) -> bool:
    """Start ``loradeck eval`` on a trained run (queue add --eval), on the run's GPUs; the
    entry holds its slot while it evaluates. False when it could not start."""
    from loradeck.engine.evals import job as eval_job

    try:
        proc = eval_job.start(run, entry.eval.get("request") or {}, gpus=entry.gpus)
    except (OSError, LoradeckError) as exc:
        say(f"{run.id}: trained; its evaluation did not start: {exc}")
        return False
    store.set_eval(run.id, {**entry.eval, "pid": proc.pid,
                            "start_time": process_start_time(proc.pid)})
    store.set_state(run.id, QueueState.EVALUATING)
    say(f"{run.id}: trained; evaluating (pid {proc.pid})")
    return True


def _evaluating(run: Run, entry) -> bool:
    """The entry's evaluation job is still going (its pid, or the run's lock it holds)."""
    evaluate = entry.eval or {}
    pid = evaluate.get("pid")
    return run.alive() or (isinstance(pid, int) and pid_alive(pid, evaluate.get("start_time")))


def _eval_outcome(run: Run) -> str:
    from loradeck.engine.evals import report

    saved = report.latest(run.dir)
    return f"{len(saved.get('models') or [])} models scored" if saved else \
        "no result: see RUN/eval/*.log"


def _notify_run(run: Run) -> None:
    from loradeck.engine.notify import send
    from loradeck.engine.runs.events import EventWriter

    try:
        send.after_run(run, EventWriter(run.events_path))
    except Exception:  # noqa: BLE001 - a notification never stops the queue
        pass


def _stop_on_failure(run: Run) -> bool:
    try:
        return bool(run.config().queue.stop_on_failure)
    except LoradeckError:
        return False


def start_ready(store: QueueStore, runs_root: Path, all_gpus: list[str], say) -> int:
    """Start queued runs while a slot is free; returns how many were started."""
    from loradeck.engine.train import launch

    started = 0
    while True:
        entries = store.entries()
        waiting = [e for e in entries if e.state == QueueState.QUEUED]
        active = [e for e in entries if e.state in ACTIVE]
        if not waiting:
            return started
        run = _run(runs_root, waiting[0].run_id)
        try:
            per_run = run.config().queue.gpus_per_run
        except LoradeckError as exc:
            store.set_state(run.id, QueueState.FAILED)
            say(f"{run.id}: {exc.line()}")
            continue
        gpus = slots.assign(all_gpus, [e.gpus for e in active], per_run, len(active))
        if gpus is None:
            return started
        entry = store.claim_next()
        if entry is None or entry.run_id != run.id:  # moved meanwhile: look again
            if entry is not None:
                store.set_state(entry.run_id, QueueState.QUEUED)
            continue
        try:
            pid = launch.launch_created(run, gpus=gpus or None)
        except LoradeckError as exc:
            store.set_state(run.id, QueueState.FAILED)
            say(f"{run.id}: not started: {exc.line()}")
            continue
        store.set_state(run.id, QueueState.RUNNING, gpus=gpus)
        say(f"{run.id}: started (pid {pid}" + (f", GPUs {','.join(gpus)}" if gpus else "")
            + ")")
        started += 1


def queue_empty_notice(runs_root: Path, ended: list[str]) -> str:
    """Tell the URLs of the runs that ended (those whose ``notify.on`` has queue_empty) that
    the queue ran dry, with how each run ended; returns the line for the runner's log."""
    from loradeck.engine.notify import send

    runs = [_run(runs_root, run_id) for run_id in ended]
    try:
        return send.queue_empty(runs)
    except Exception as exc:  # noqa: BLE001 - a notification never stops the queue
        return f"no queue-empty notification: {type(exc).__name__}"


def main() -> int:
    """Hold the queue's lock, then run the queue until it is empty or stopped."""
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = run_files.open_fd(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another runner holds the queue
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)

    def say(text: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", flush=True)

    poll = float(os.environ.get(POLL_ENV) or 2.0)
    store, runs_root = QueueStore(), paths.runs_dir()
    from loradeck.engine.system import gpus as gpu_info

    all_gpus = gpu_info.visible_ids()
    say(f"runner {os.getpid()}: " + (f"GPUs {','.join(all_gpus)}" if all_gpus
                                      else "no GPU: one run at a time"))
    ended: list[str] = []  # runs that ended in this runner's life: told when the queue is empty
    while True:
        ended += reconcile(store, runs_root, say)
        entries = store.entries()
        active = [e for e in entries if e.state in ACTIVE]
        if store.flag(STOPPED_FLAG):
            if not active:
                say("the queue is stopped; the runner ends")
                return 0
        else:
            start_ready(store, runs_root, all_gpus, say)
            entries = store.entries()
            if not any(e.state in (*ACTIVE, QueueState.QUEUED) for e in entries):
                say("the queue is empty; the runner ends")
                if ended:
                    say(queue_empty_notice(runs_root, ended))
                return 0
        time.sleep(poll)


if __name__ == "__main__":
    from loradeck.engine.system.process_exit import exit_now

    exit_now(main())
