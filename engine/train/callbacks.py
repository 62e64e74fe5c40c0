"""The Trainer's callbacks in a job: each does one thing, and they share one timer.

- ``MetricsCallback``: Trainer logs into ``metrics`` events (tokens/s without eval time), and
  the adapter verified after a resume;
- ``StopCallback``: a stop request (file or SIGTERM) and a full disk before a save stop the
  run with a checkpoint;
- ``CheckpointCallback``: a checkpoint marked complete once written, its event, rotation;
- ``SamplesCallback``: greedy answers at each evaluation (its time kept out of tokens/s);
- ``FaultInjection``: test-only faults, added by the job only when their variable is set.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from loradeck.engine.data import templates
from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs.store import COMPLETE_MARKER
from loradeck.engine.train import disk
from loradeck.engine.train.checkpoints import (
    agree,
    barrier,
    check_disk,
    memory_gb,
    rotate_checkpoints,
    verify_loaded_adapter,
)
from loradeck.engine.train.context import JobContext
from loradeck.engine.train.methods import method_figures

INJECT_OOM_ENV = "LORADECK_INJECT_OOM_AT_STEP"  # tests: raise an out-of-memory error once there
# tests: kill -9 the job once checkpoint-N is written but not yet marked complete
INJECT_KILL_ENV = "LORADECK_INJECT_KILL_BEFORE_COMPLETE_AT_STEP"
# tests: wait at the end of step N until a stop is requested (so a stop lands mid-run, however
# fast the machine)
INJECT_HOLD_ENV = "LORADECK_INJECT_HOLD_AT_STEP"
HOLD_LIMIT_S = 600.0


def _r(value: Any, digits: int = 4) -> Any:
    return round(float(value), digits) if isinstance(value, (int, float)) else value


def decode_whole(tokenizer: Any, ids: list[int]) -> str:
    """``ids`` as text, whole characters only: an answer cut at max new tokens can end inside
    a character that takes several byte tokens, which would decode as U+FFFD; those last
    tokens are left out (at most 3: a UTF-8 character has 4 bytes at most)."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    for cut in range(1, min(4, len(ids)) + 1):
        if not text.endswith("\ufffd"):
            break
        text = tokenizer.decode(ids[:-cut], skip_special_tokens=True)
    return text


@dataclass
class EvalTimer:
    """Seconds spent evaluating (and answering samples) since the last train loss: kept out of
    the training tokens/s."""

    seconds: float = 0.0


class MetricsCallback(TrainerCallback):
    """Trainer logs as ``metrics`` events; the last losses; the adapter checked on resume."""

    def __init__(self, ctx: JobContext, timer: EvalTimer, resume_from: Path | None = None) -> None:
        self.ctx, self.timer, self.resume_from = ctx, timer, resume_from
        self.t0 = self.last_t = time.time()
        self.step0 = 0
        self.last_tokens: float | None = None
        self.last_loss: float | None = None
        self.last_eval_loss: float | None = None
        self.last_eval_step: int | None = None
        self.resume_check: dict[str, Any] | None = None

    # training starts (after the Trainer loaded a checkpoint, when resuming)
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.t0 = self.last_t = time.time()
        self.step0 = state.global_step
        self.ctx.step = state.global_step
        if self.resume_from is not None and model is not None:
            self.resume_check = verify_loaded_adapter(model, self.resume_from)
            loaded = f"{self.resume_check['tensors']} adapter tensors"
            self.ctx.log(f"resumed from {self.resume_from.name} at step {state.global_step}: "
                         f"{loaded} loaded, optimizer, scheduler and RNG state restored",
                         resumed_from=str(self.resume_from), step=state.global_step,
                         **self.resume_check)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_log = True  # the last step's loss, whatever logging_steps is
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "eval_loss" in logs:
            self.last_eval_step = state.global_step  # every process: it decides the final eval
        if not self.ctx.is_main or not logs:
            return control
        now = time.time()
        step = state.global_step
        ev: dict[str, Any] = {"step": step, "max_steps": state.max_steps,
                              "epoch": _r(state.epoch or 0.0)}
        if "eval_loss" in logs:
            self.timer.seconds += float(logs.get("eval_runtime") or 0.0)
            self.last_eval_loss = ev["eval_loss"] = _r(logs["eval_loss"])
        if "loss" in logs:
            self.last_loss = ev["loss"] = _r(logs["loss"])
            for key in ("learning_rate", "grad_norm"):
                if logs.get(key) is not None:
                    ev[key] = _r(logs[key], 8)
            tokens = logs.get("num_tokens")
            if tokens is not None:
                spent = now - self.last_t - self.timer.seconds
                done = tokens - (self.last_tokens or 0.0)
                if spent > 0:
                    ev["tokens_per_second"] = round(done / spent, 1)
                self.last_tokens, self.last_t, self.timer.seconds = float(tokens), now, 0.0
            ev["memory_gb"] = memory_gb(self.ctx.device)
            steps = step - self.step0
            if steps > 0 and state.max_steps and step < state.max_steps:
                ev["eta_seconds"] = round((now - self.t0) / steps * (state.max_steps - step), 1)
        figures = method_figures(str(self.ctx.config.training.method), logs)
        if figures:  # DPO's reward margin, KTO's KL, GRPO's rewards: the method at work
            ev["figures"] = figures
        if "loss" in ev or "eval_loss" in ev:
            self.ctx.events.emit("metrics", **ev)
        return control


class StopCallback(TrainerCallback):
    """A stop request, or too little free disk for the next save, ends training with a
    checkpoint (every process agrees)."""

    def __init__(self, ctx: JobContext, checkpoint_need_gb: float = disk.SMALL_FILES_GB) -> None:
        self.ctx, self.checkpoint_need_gb = ctx, checkpoint_need_gb
        self.stopping = False

    def on_step_end(self, args, state, control, **kwargs):
        self.ctx.step = state.global_step
        disk_error: LoradeckError | None = None
        want_stop = self.ctx.stop_requested() and not self.stopping
        if want_stop or control.should_save:
            try:
                check_disk(self.ctx.run.dir, self.checkpoint_need_gb,
                           f"checkpoint-{state.global_step}")
            except LoradeckError as exc:
                disk_error = exc
        stop, low = agree([want_stop, disk_error is not None], args.device) \
            if self.ctx.world_size > 1 else (want_stop, disk_error is not None)
        if low:
            raise disk_error or LoradeckError(
                f"not enough free disk for checkpoint-{state.global_step} on another process",
                kind="disk", hint="free some space, then resume the run")
        if stop:
            self.stopping = True
            self.ctx.phase("stopping", f"stop requested: saving a checkpoint at step "
                                       f"{state.global_step}")
            control.should_save = True
            control.should_training_stop = True
        return control


class CheckpointCallback(TrainerCallback):
    """A checkpoint counts once every process wrote its part: marked complete, announced,
    and the oldest beyond ``save_total_limit`` removed."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        barrier()  # every process has written its part (RNG states) before it counts
        if self.ctx.is_main and path.is_dir():
            marker = {"step": state.global_step, "t": round(time.time(), 3)}
            (path / COMPLETE_MARKER).write_text(json.dumps(marker), encoding="utf-8")
            self.ctx.events.emit("checkpoint", step=state.global_step, path=str(path))
            self.ctx.run.update_state(last_checkpoint=str(path))
            rotate_checkpoints(self.ctx.run, self.ctx.config.training.save_total_limit, path)
        return control


class FaultInjection(TrainerCallback):
    """Test-only faults (``INJECT_OOM_ENV``, ``INJECT_KILL_ENV``, ``INJECT_HOLD_ENV``): an
    out-of-memory error once at a step, kill -9 once a checkpoint is written but before it is
    marked complete, or a wait at a step until a stop is requested. It runs before the stop
    check."""

    ENVS = (INJECT_OOM_ENV, INJECT_KILL_ENV, INJECT_HOLD_ENV)

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.oom_at = os.environ.get(INJECT_OOM_ENV)
        self.kill_at = os.environ.get(INJECT_KILL_ENV)
        self.hold_at = os.environ.get(INJECT_HOLD_ENV)

    @classmethod
    def wanted(cls) -> bool:
        return any(os.environ.get(name) for name in cls.ENVS)

    def on_step_end(self, args, state, control, **kwargs):
        step = self.ctx.step = state.global_step  # it runs before StopCallback sets it
        if self.hold_at and step == int(self.hold_at):
            deadline = time.monotonic() + HOLD_LIMIT_S
            while not self.ctx.stop_requested() and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.oom_at and not self.ctx.oom_injected and step == int(self.oom_at):
            import torch

            self.ctx.oom_injected = True
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (injected at step {step})")
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.ctx.is_main and self.kill_at and state.global_step == int(self.kill_at):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        return control


class RewardSamplesCallback(TrainerCallback):
    """GRPO: at each eval step (and the last), an answer to each of a few prompts from the
    batch the rewards just scored, with its rewards, as a ``samples`` event."""

    def __init__(self, ctx: JobContext, board: Any, questions: dict[str, str], every: int,
                 limit: int) -> None:
        self.ctx, self.board, self.questions = ctx, board, questions
        self.every, self.limit = every, limit

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if not self.ctx.is_main or not (step % self.every == 0 or step == state.max_steps):
            return control
        samples = self.board.samples(self.limit, self.questions)
        if samples:
            self.ctx.events.emit("samples", step=step, samples=samples)
        return control


class SamplesCallback(TrainerCallback):
    """At each evaluation, greedy answers to a few fixed prompts, written as a ``samples``
    event beside their references: the model learning, in words. Its time is kept out of the
    training tokens/s (added to the shared eval timer) and totalled."""

    def __init__(self, ctx: JobContext, tokenizer: Any, prompts: list[dict[str, str]],
                 max_new_tokens: int, template: str, timer: EvalTimer) -> None:
        self.ctx, self.tokenizer, self.prompts = ctx, tokenizer, prompts
        self.max_new_tokens, self.timer = max_new_tokens, timer
        self.stop_ids = sorted({tokenizer.eos_token_id}
                               | templates.end_of_turn_ids(tokenizer, template))
        self.seconds = 0.0

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if model is None or not self.prompts or not self.ctx.is_main:
            return control
        import torch

        started = time.perf_counter()
        was_training = model.training
        model.eval()
        answers = []
        with torch.inference_mode():
            for p in self.prompts:
                ids = self.tokenizer(p["prompt"], return_tensors="pt")["input_ids"]
                ids = ids.to(model.device)
                seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     do_sample=False, num_beams=1,
                                     max_new_tokens=self.max_new_tokens,
                                     eos_token_id=self.stop_ids,
                                     pad_token_id=self.tokenizer.pad_token_id, use_cache=True,
                                     temperature=None, top_p=None, top_k=None)
                new = [t for t in seq[0, ids.shape[1]:].tolist() if t not in self.stop_ids]
                answers.append({"prompt": p["text"], "reference": p["reference"],
                                "answer": decode_whole(self.tokenizer, new).strip()})
        if was_training:
            model.train()
        spent = time.perf_counter() - started
        self.seconds += spent
        self.timer.seconds += spent  # not training time: kept out of tokens/s
        self.ctx.events.emit("samples", step=state.global_step, samples=answers,
                             seconds=round(spent, 3))
        return control
