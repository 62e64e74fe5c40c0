"""The training job process: ``python -m loradeck.engine.train.job RUN_DIR [--resume]``.

Started detached by ``loradeck.engine.train.launch`` (own session, output to RUN/train.log). It writes the run's
events and state: status queued -> loading -> training -> saving -> done, or stopping -> stopped,
or failed with an ``error`` event (kind and a line in words plus a hint; a traceback goes only to
train.log). SIGTERM and SIGINT become a graceful stop (checkpoint, then exit); SIGHUP is ignored.
A CUDA out-of-memory error is recorded with its numbers and, when training.oom_retry is on,
retried from the last complete checkpoint with half the micro-batch and twice the accumulation.
Under ``accelerate launch`` only the main process (rank 0) writes events and state (on a
multi-machine run, each machine's local rank 0 writes that machine's own run directory).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from loradeck.engine import config as cfg
from loradeck.engine.errors import ErrorKind, LoradeckError
from loradeck.engine.models.loading import free_memory
from loradeck.engine.runs import lock as joblock
from loradeck.engine.runs.events import EventWriter, NullEvents
from loradeck.engine.runs.progress import duration
from loradeck.engine.runs.store import COMPLETE_MARKER, Run
from loradeck.engine.system.process_exit import exit_now
from loradeck.engine.train.context import JobContext


class JobFailed(Exception):
    """Raised after the error event is written: the job ends as failed."""


def classify(exc: BaseException) -> str:
    """The error kind of an exception that is not a LoradeckError."""
    name = type(exc).__name__
    text = str(exc).lower()
    if name == "OutOfMemoryError" or "out of memory" in text:
        return "oom"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk"
    if isinstance(exc, (ConnectionError, TimeoutError)) or "connection" in text and "error" in text:
        return "network"
    return "internal"


def is_oom(exc: BaseException) -> bool:
    return classify(exc) == "oom" and not isinstance(exc, LoradeckError)


def rank_info() -> tuple[int, int, int, bool]:
    """(rank, world size, local rank, lead) from the launcher's environment.

    The lead writes this machine's run directory: rank 0, and on the other machines of a
    multi-machine run their local rank 0 (each machine has its own run directory)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return rank, world, local_rank, rank == 0 or (local_rank == 0 and world > local_world)


def drop_incomplete_checkpoints(run: Run) -> list[str]:
    """Remove checkpoint dirs cut off mid-write (no completeness marker); returns their names."""
    dropped = []
    if run.checkpoints_dir.is_dir():
        for d in sorted(run.checkpoints_dir.iterdir()):
            if re.fullmatch(r"checkpoint-\d+", d.name) and d.is_dir() \
                    and not (d / COMPLETE_MARKER).is_file():
                shutil.rmtree(d, ignore_errors=True)
                dropped.append(d.name)
    return dropped


def oom_report(ctx: JobContext, exc: BaseException) -> dict:
    """The numbers of an out-of-memory error: micro-batch, accumulation, length, memory."""
    from loradeck.engine.train.checkpoints import memory_gb

    t = ctx.config.training
    report = {"step": ctx.step, "micro_batch": t.batch_size, "grad_accum": t.grad_accum,
              "max_length": t.max_length, "memory_gb": memory_gb(ctx.device),
              "device": ctx.device, "detail": str(exc).splitlines()[0][:300] if str(exc) else ""}
    if ctx.device == "cuda":
        import torch

        if torch.cuda.is_available():
            report["gpu_total_gb"] = round(
                torch.cuda.get_device_properties(max(ctx.local_rank, 0)).total_memory / 1e9, 2)
    return report


def train_with_retries(ctx: JobContext, resume: bool):
    """Train (resuming when asked); on out-of-memory, retry with half the micro-batch."""
    from loradeck.engine.train import trainer

    run = ctx.run
    resume_from = None
    if resume:
        if ctx.is_main:
            for name in drop_incomplete_checkpoints(run):
                ctx.log(f"removed {name}: it was cut off while being written", level="warning")
        resume_from = run.latest_checkpoint()
        ctx.log(f"resuming from {resume_from.name}" if resume_from else
                "no complete checkpoint yet: training from the beginning")
    while True:
        report = None
        ctx.training = False
        try:
            return trainer.train_once(ctx, resume_from)
        except Exception as exc:  # an OOM is handled below, outside the except block,
            if not is_oom(exc):     # so its traceback no longer holds the model's memory
                raise
            traceback.print_exc()
            report = oom_report(ctx, exc)
        free_memory(reset_peak=True)
        t = ctx.config.training
        retry = t.oom_retry and t.batch_size > 1 and ctx.world_size == 1 and ctx.training
        half, double = max(t.batch_size // 2, 1), t.grad_accum * 2
        where = f"step {report['step']}" if report["step"] else "the first step"
        mem = f"{report['memory_gb']} GB in use"
        if report.get("gpu_total_gb"):
            mem += f" of {report['gpu_total_gb']} GB"
        memory = f"out of {'GPU ' if ctx.device == 'cuda' else ''}memory"
        message = (f"{memory} at {where} with micro-batch {t.batch_size} x max_length "
                   f"{t.max_length} (grad_accum {t.grad_accum}; {mem})")
        if not ctx.training:
            message = f"{memory} while loading the model and data ({mem})"
            hint = ("use model.quantization 4bit (or 8bit), a smaller model, or a GPU with more "
                    "memory; `loradeck estimate CONFIG` shows what fits")
        elif retry:
            hint = (f"retrying with training.batch_size {half} and training.grad_accum {double}: "
                    "the effective batch stays the same")
        else:
            hint = ("lower training.batch_size (raise training.grad_accum to keep the effective "
                    "batch), shorten training.max_length, use model.quantization 4bit or turn on "
                    "training.gradient_checkpointing")
        if ctx.is_main:
            ctx.events.error("oom", message, hint, retrying=retry, **report)
        if not retry:
            raise JobFailed(message)
        t.batch_size, t.grad_accum = half, double
        if ctx.is_main:
            cfg.save(ctx.config, run.config_path)
        resume_from = run.latest_checkpoint()
        ctx.log(f"retrying after out-of-memory with batch_size {half} x grad_accum {double} "
                f"(effective batch {half * double}) from "
                + (resume_from.name if resume_from else "the beginning"), level="warning",
                batch_size=half, grad_accum=double)


def _install_signals(ctx: JobContext) -> None:
    def graceful(signum, frame):  # noqa: ARG001
        ctx.signalled = True
        print(f"received {signal.Signals(signum).name}: saving a checkpoint at the next step, "
              "then stopping", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, graceful)
    signal.signal(signal.SIGINT, graceful)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _fail(ctx_events, run: Run, is_main: bool, kind: str, message: str, hint: str) -> int:
    if is_main:
        ctx_events.error(str(ErrorKind.of(kind).event_kind), message, hint)
        ctx_events.status("failed", message)
        run.update_state(phase="failed", ended=time.time())
    print(f"loradeck job failed: {message}" + (f" ({hint})" if hint else ""), file=sys.stderr,
          flush=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the job, then tell the run's notification URLs how it ended (main process)."""
    ap = argparse.ArgumentParser(prog="python -m loradeck.engine.train.job", description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", help="the run directory (holding config.yaml)")
    ap.add_argument("--resume", action="store_true", help="continue from the newest complete "
                    "checkpoint")
    ns = ap.parse_args(argv)
    run = Run(Path(ns.run_dir).resolve())
    code, events = _job(run, ns.resume)
    if events is not None:
        from loradeck.engine.notify import send

        try:
            send.after_run(run, events)
        except Exception as exc:  # noqa: BLE001 - a notification never fails the run
            events.log(f"no notification sent: {type(exc).__name__}", level="warning")
    return code


def _job(run: Run, resume: bool) -> tuple[int, EventWriter | None]:
    """The job itself: its exit status, and its event writer when it ran as the main process."""
    rank, world, local_rank, is_main = rank_info()

    if world == 1 and not joblock.adopt(run.dir):  # started by hand, not by the launcher
        try:
            joblock.acquire(run.dir, run.id)
        except LoradeckError as exc:
            print(f"loradeck: {exc.line()}", file=sys.stderr, flush=True)
            return 2, None
    events = EventWriter(run.events_path) if is_main else NullEvents()
    writer = events if is_main else None
    if is_main:
        if world == 1:
            run.mark_process(phase="loading")
        else:
            run.update_state(rank0_pid=os.getpid(), phase="loading")
    try:
        config = run.config()
    except LoradeckError as exc:
        ev = exc.to_event()
        return _fail(events, run, is_main, exc.kind, ev["message"], ev["hint"]), writer
    ctx = JobContext(run=run, config=config, events=events, rank=rank, world_size=world,
                     local_rank=local_rank, lead=is_main)
    _install_signals(ctx)
    log_hint = f"the traceback is in {run.log_path}; see: loradeck logs {run.id}"
    from loradeck.engine.system.sampler import Sampler

    sampler = Sampler(events).start() if is_main else None  # a system event every few s
    try:
        try:
            outcome = train_with_retries(ctx, resume)
        finally:
            if sampler is not None:
                sampler.stop()  # no sample after the closing status
    except JobFailed as exc:
        if is_main:
            events.status("failed", str(exc))
            run.update_state(phase="failed", ended=time.time())
        return 1, writer
    except LoradeckError as exc:
        ev = exc.to_event()
        return _fail(events, run, is_main, exc.kind, ev["message"], ev["hint"]), writer
    except Exception as exc:
        traceback.print_exc()
        kind = classify(exc)
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        if kind == "disk":
            message = f"the disk filled up while writing the run ({first})"
            hint = "free some space, then resume the run; the last complete checkpoint is kept"
        elif kind == "oom":
            message, hint = f"out of memory: {first}", "lower training.batch_size or max_length"
        elif kind == "network":
            message, hint = f"network error: {first}", "check the connection, then resume"
        else:
            message, hint = f"training failed: {type(exc).__name__}: {first}", log_hint
        return _fail(events, run, is_main, kind, message, hint), writer

    if outcome.stopped:
        if is_main:
            cp = run.latest_checkpoint()
            if outcome.extra.get("before_start"):
                where = "before training (re)started" + (f"; {cp.name} is kept" if cp else "")
            else:
                where = f"at step {outcome.step}" + (f"; {cp.name} saved" if cp else "")
            ctx.phase("stopped", f"stopped {where}; continue with: loradeck resume {run.id}")
            run.stop_path.unlink(missing_ok=True)
            run.update_state(ended=time.time())
        return 0, writer
    if is_main:
        spent = outcome.extra.get("sample_seconds")
        if spent is not None and outcome.runtime_s:
            ctx.log(f"sample answers at the eval steps took {spent:.1f} s, "
                    f"{100 * spent / outcome.runtime_s:.1f}% of the training time",
                    sample_seconds=spent)
        events.emit("done", adapter=str(outcome.adapter), train_loss=outcome.train_loss,
                    eval_loss=outcome.eval_loss, runtime_s=outcome.runtime_s, step=outcome.step,
                    max_steps=outcome.max_steps,
                    **({"sample_seconds": spent} if spent is not None else {}))
        ctx.phase("done", f"training finished at step {outcome.step} in "
                          f"{duration(outcome.runtime_s)}; adapter in {outcome.adapter}")
        run.update_state(ended=time.time())
    return 0, writer


if __name__ == "__main__":
    exit_now(main())
