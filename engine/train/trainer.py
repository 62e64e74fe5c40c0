"""One training pass of a run: TRL SFTTrainer with a PEFT LoRA config, events, stop, checkpoints.

A heavy module: only the job process (``loradeck.engine.train.job``) imports it. The pieces:

- ``lora_config`` / ``sft_config``: the config file's sections as PEFT and TRL objects;
- ``EventsCallback``: turns Trainer logs into ``metrics`` events, saves a checkpoint and stops
  when asked, checks free disk before each save, marks each checkpoint complete once written;
- ``train_once``: load, prepare, train (or resume), save the adapter; returns an ``Outcome``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from loradeck.engine.config import Config
from loradeck.engine.data import templates
from loradeck.engine.errors import LoradeckError
from loradeck.engine.models import layout
from loradeck.engine.models import loading as models
from loradeck.engine.patches import cpu_fsdp
from loradeck.engine.runs.store import COMPLETE_MARKER, Run
from loradeck.engine.train import disk

INJECT_OOM_ENV = "LORADECK_INJECT_OOM_AT_STEP"  # tests: raise an out-of-memory error once there
# tests: kill -9 the job once checkpoint-N is written but not yet marked complete
INJECT_KILL_ENV = "LORADECK_INJECT_KILL_BEFORE_COMPLETE_AT_STEP"


@dataclass
class JobContext:
    """What one job process knows: its run, config, events writer, rank and stop flag."""

    run: Run
    config: Config
    events: Any
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    signalled: bool = False      # set by the SIGTERM/SIGINT handler
    step: int = 0                # the last global step reached
    oom_injected: bool = False
    device: str = "cpu"
    training: bool = False       # the training loop has started (an OOM there is retried)

    lead: bool | None = None     # writes the run directory; default: rank 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0 if self.lead is None else self.lead

    def stop_requested(self) -> bool:
        return self.signalled or self.run.stop_path.exists()

    def phase(self, phase: str, message: str = "") -> None:
        """A status event and the phase in state.json (main process only)."""
        if self.is_main:
            self.events.status(phase, message)
            self.run.update_state(phase=phase)

    def log(self, text: str, level: str = "info", **fields: Any) -> None:
        if self.is_main:
            self.events.emit("log", level=level, text=text, **fields)


@dataclass
class Outcome:
    """How a training pass ended."""

    stopped: bool
    step: int
    max_steps: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    runtime_s: float = 0.0
    adapter: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---- configs --------------------------------------------------------------------------------

def lora_config(config: Config):
    """PEFT LoraConfig from the lora section (rslora and dora as PEFT's flags)."""
    from peft import LoraConfig

    lo = config.lora
    return LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                      target_modules=lo.target_modules, bias=lo.bias, task_type="CAUSAL_LM",
                      use_rslora=lo.variant == "rslora", use_dora=lo.variant == "dora")


def use_liger(config: Config, device: str) -> bool:
    """Liger kernels: on when asked (and installed), with auto only on CUDA when installed."""
    from loradeck.engine.train.preflight import check_liger, liger_installed

    check_liger(config)
    choice = config.training.liger
    return liger_installed() and (choice == "on" or (choice == "auto" and device == "cuda"))


def padding_free_applies(config: Config) -> bool:
    """Whether ``training.padding_free`` changes anything for this config.

    Not with packing (TRL's bfd packing is padding-free already), not at batch size 1 (one row
    has no padding to save), and not for models with their own code (``trust_remote_code``),
    whose attention may not read row boundaries from the position ids."""
    t = config.training
    return (t.padding_free and not t.packing and t.batch_size > 1
            and not config.model.trust_remote_code)


def make_padding_free(trainer) -> bool:
    """Switch the trainer's collator to padding-free batches; False when it has no such switch.

    The rows of a batch are flattened into one sequence with position ids that restart at 0 on
    each row, and no attention mask; transformers turns those position ids into a block-diagonal
    causal mask for SDPA and eager attention, and flash attention reads the sequence boundaries
    the collator adds. ``SFTConfig(padding_free=True)`` is not used because TRL refuses it while
    ``max_length`` is set without packing; its dataset preparation still cuts every row to
    ``max_length`` (packing off), so switching the collator it built keeps that and its labels."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = trainer.data_collator
    if not isinstance(collator, DataCollatorForLanguageModeling):
        return False
    collator.padding_free = True
    return True


def sft_config(config: Config, run: Run, *, device: str, dtype: Any, has_eval: bool):
    """TRL SFTConfig from the training section; checkpoints go to RUN/checkpoints."""
    import torch
    from trl import SFTConfig

    t = config.training
    cuda = device == "cuda"
    quantized = config.model.quantization != "none"
    return SFTConfig(
        output_dir=str(run.checkpoints_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_length=t.max_length,
        packing=t.packing,
        dataset_text_field="text",
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=None,  # rotated by EventsCallback once the new one is complete
        seed=t.seed,
        data_seed=t.seed,
        bf16=cuda and dtype == torch.bfloat16,
        fp16=cuda and dtype == torch.float16,
        use_cpu=not cuda,
        optim="paged_adamw_32bit" if cuda and quantized else "adamw_torch",
        use_liger_kernel=use_liger(config, device),
        report_to=t.report_to,
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        save_on_each_node=t.num_machines > 1,  # each machine resumes from its own run dir
    )


# ---- measurements ---------------------------------------------------------------------------

def memory_gb(device: str) -> float:
    """Peak CUDA memory allocated, else the process's resident memory, in GB."""
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            return round(torch.cuda.max_memory_allocated() / 1e9, 3)
    from loradeck.engine.system.sampler import process_rss_gb

    return process_rss_gb()


def check_disk(path: Path, need_gb: float, what: str) -> None:
    """Raise a ``disk`` LoradeckError when less than ``need_gb`` is free at ``path``."""
    disk.check_free(path, need_gb, what, hint="free some space, then resume the run: its last "
                    "complete checkpoint is kept")


def adapter_tensors(model) -> dict[str, Any]:
    """The adapter's weights by the names they are saved under."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def checksum(tensors: dict[str, Any]) -> float:
    """Sum of absolute values over all tensors (float64): equal weights give equal sums."""
    total = 0.0
    for _, t in sorted(tensors.items()):
        total += float(t.detach().double().abs().sum().item())
    return round(total, 6)


FSDP_MODEL_DIR = "pytorch_model_fsdp_0"  # accelerate's sharded (DCP) model state in a checkpoint


def read_sharded_checkpoint(path: Path) -> dict[str, Any]:
    """The tensors of a torch.distributed.checkpoint directory, whole, in this process."""
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(path, Path(tmp) / "state.pt")
        state = torch.load(Path(tmp) / "state.pt", weights_only=True)
    return state.get("model", state)


def verify_loaded_adapter(model, checkpoint: Path) -> dict[str, Any]:
    """Compare the model's adapter weights with the checkpoint's; raise if they differ.

    Under FSDP every process must call it (the live weights are gathered from the shards)."""
    import torch
    from safetensors.torch import load_file

    if (checkpoint / FSDP_MODEL_DIR).is_dir():  # sharded (FSDP): gather, read the shards
        live = {k: getattr(v, "full_tensor", lambda v=v: v)().detach().cpu()
                for k, v in sorted(adapter_tensors(model).items())}  # every process, same order
        saved = read_sharded_checkpoint(checkpoint / FSDP_MODEL_DIR)
    else:
        saved = load_file(str(checkpoint / "adapter_model.safetensors"))
        live = adapter_tensors(model)
    missing = sorted(set(saved) - set(live))
    differ = [k for k in saved if k in live and not torch.equal(
        live[k].detach().cpu().to(saved[k].dtype), saved[k])]
    if missing or differ:
        raise LoradeckError(f"the adapter weights in {checkpoint.name} did not load "
                            f"({len(missing)} missing, {len(differ)} different tensors)",
                            kind="internal", where=str(checkpoint),
                            hint="start a new run, or resume from an earlier checkpoint")
    return {"tensors": len(saved), "adapter_checksum": checksum(live)}


def fsdp_enabled(args: Any = None) -> bool:
    """The job runs under FSDP (``accelerate launch --use_fsdp`` sets ACCELERATE_USE_FSDP)."""
    return bool(getattr(args, "fsdp", None)) or \
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def save_final_adapter(trainer, path: Path) -> None:
    """Save the trained adapter as a PEFT adapter dir (every process calls this).

    Under FSDP the checkpoints hold sharded state, which ``save_model`` skips; for the final
    adapter every process gathers the full state dict (FULL_STATE_DICT, to the main process's
    CPU) and the main process writes adapter_model.safetensors and adapter_config.json."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(path))


def agree(flags: list[bool], device: Any) -> list[bool]:
    """Across processes: each flag true when any process has it true (identity when alone)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flags
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rotate_checkpoints(run: Run, keep: int, newest: Path) -> list[str]:
    """Delete the oldest complete checkpoints beyond ``keep``; ``newest`` (just marked
    complete) is never one of them. Runs only after the new checkpoint is complete, so a crash
    at any moment leaves at least one complete checkpoint to resume from."""
    import shutil

    old = [cp for cp in run.checkpoints() if cp != newest]
    drop = old[: max(len(old) - (keep - 1), 0)]
    for cp in drop:
        (cp / COMPLETE_MARKER).unlink(missing_ok=True)  # no longer counts, even half-deleted
        shutil.rmtree(cp, ignore_errors=True)
    return [cp.name for cp in drop]


def _r(value: Any, digits: int = 4) -> Any:
    return round(float(value), digits) if isinstance(value, (int, float)) else value


# ---- the callback ---------------------------------------------------------------------------

class EventsCallback(TrainerCallback):
    """Trainer hooks: metrics events, graceful stop, disk check before saves, complete marker."""

    def __init__(self, ctx: JobContext, *, checkpoint_need_gb: float = disk.SMALL_FILES_GB,
                 resume_from: Path | None = None) -> None:
        self.ctx = ctx
        self.checkpoint_need_gb = checkpoint_need_gb
        self.resume_from = resume_from
        self.stopping = False
        self.t0 = time.time()
        self.step0 = 0
        self.last_t = self.t0
        self.last_tokens: float | None = None
        self.eval_time = 0.0
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
        self.ctx.step = state.global_step
        self._maybe_inject_oom(state.global_step)
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

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        barrier()  # every process has written its part (RNG states) before it counts
        if self.ctx.is_main and path.is_dir():
            self._maybe_inject_kill(state.global_step)
            marker = {"step": state.global_step, "t": round(time.time(), 3)}
            (path / COMPLETE_MARKER).write_text(json.dumps(marker), encoding="utf-8")
            self.ctx.events.emit("checkpoint", step=state.global_step, path=str(path))
            self.ctx.run.update_state(last_checkpoint=str(path))
            rotate_checkpoints(self.ctx.run, self.ctx.config.training.save_total_limit, path)
        return control

    def _maybe_inject_kill(self, step: int) -> None:
        at = os.environ.get(INJECT_KILL_ENV)
        if at and step == int(at):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)

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
            self.eval_time += float(logs.get("eval_runtime") or 0.0)
            self.last_eval_loss = ev["eval_loss"] = _r(logs["eval_loss"])
        if "loss" in logs:
            self.last_loss = ev["loss"] = _r(logs["loss"])
            for key in ("learning_rate", "grad_norm"):
                if logs.get(key) is not None:
                    ev[key] = _r(logs[key], 8)
            tokens = logs.get("num_tokens")
            if tokens is not None:
                spent = now - self.last_t - self.eval_time
                done = tokens - (self.last_tokens or 0.0)
                if spent > 0:
                    ev["tokens_per_second"] = round(done / spent, 1)
                self.last_tokens, self.last_t, self.eval_time = float(tokens), now, 0.0
            ev["memory_gb"] = memory_gb(self.ctx.device)
            steps = step - self.step0
            if steps > 0 and state.max_steps:
                ev["eta_seconds"] = round((now - self.t0) / steps * (state.max_steps - step), 1)
        if "loss" in ev or "eval_loss" in ev:
            self.ctx.events.emit("metrics", **ev)
        return control

    def _maybe_inject_oom(self, step: int) -> None:
        at = os.environ.get(INJECT_OOM_ENV)
        if at and not self.ctx.oom_injected and step == int(at):
            import torch

            self.ctx.oom_injected = True
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (injected at step {step})")


class SamplesCallback(TrainerCallback):
    """At each evaluation, greedy answers to a few fixed prompts, written as a ``samples``
    event beside their references: the model learning, in words. Its time is kept out of the
    training tokens/s (added to the events callback's eval time) and totalled."""

    def __init__(self, ctx: JobContext, tokenizer: Any, prompts: list[dict[str, str]],
                 max_new_tokens: int, template: str, timer: EventsCallback) -> None:
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
                                "answer": self.tokenizer.decode(
                                    new, skip_special_tokens=True).strip()})
        if was_training:
            model.train()
        spent = time.perf_counter() - started
        self.seconds += spent
        self.timer.eval_time += spent  # not training time: kept out of tokens/s
        self.ctx.events.emit("samples", step=state.global_step, samples=answers,
                             seconds=round(spent, 3))
        return control


# ---- one pass -------------------------------------------------------------------------------

def train_once(ctx: JobContext, resume_from: Path | None = None,
               callbacks: tuple = ()) -> Outcome:
    """Load the model and data, train (from ``resume_from`` when given), save the adapter.

    ``callbacks``: more TrainerCallbacks (benchmarks measure with one)."""
    import torch
    from transformers import set_seed
    from trl import SFTTrainer

    from loradeck.engine.data import prep as dataset_prep

    config, run = ctx.config, ctx.run
    t = config.training
    quantized = config.model.quantization != "none"
    device = models.pick_device(t.device)
    ctx.device = device
    dtype = models.compute_dtype(config.model, device)
    set_seed(t.seed)

    ctx.phase("loading", f"loading {config.model.name}"
              + (f" ({config.model.quantization})" if quantized else "") + f" on {device}")
    tokenizer = models.load_tokenizer(config.model)
    try:
        prepared = dataset_prep.prepare(config, tokenizer, run_dir=run.dir if ctx.is_main
                                        else None, progress=ctx.log,
                                        should_stop=ctx.stop_requested)
    except dataset_prep.PrepStopped:
        step = int(resume_from.name.rsplit("-", 1)[1]) if resume_from else 0
        return Outcome(stopped=True, step=step, extra={"before_start": True})
    templates.install(tokenizer, config.dataset.template)  # the one rendering the rows
    # FSDP on GPUs: load on the CPU; sharding moves each process's part to its GPU.
    model = models.load_model(config.model, device=device, for_training=True,
                              device_map={"": "cpu"} if fsdp_enabled() and device == "cuda"
                              else None)
    # the launch could not check a model that was not on disk yet (demo:tiny on a fresh home,
    # a .gguf not converted, a Hub model not downloaded): a target it lacks is refused now
    layout.check_targets(layout.layout_of(model), config.lora.target_modules, config.model.name)
    qalora_info = None
    if config.lora.variant == "qalora":  # the base goes onto the run's INT4 codes
        from loradeck.engine.quant import qalora

        qalora_info = qalora.quantize_base(model, config.lora.target_modules,
                                           config.lora.group_size, qalora.codes_file(run.dir),
                                           say=ctx.log)
        peft_config = qalora.lora_config(config.lora, qalora_info["targets"])
    else:
        peft_config = lora_config(config)
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=t.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})

    args = sft_config(config, run, device=device, dtype=dtype, has_eval=prepared.eval is not None)
    if fsdp_enabled(args) and device == "cpu":
        cpu_fsdp.apply()
    callback = EventsCallback(ctx, resume_from=resume_from)
    sampler = None
    if prepared.samples and prepared.eval is not None and ctx.world_size == 1:
        sampler = SamplesCallback(ctx, tokenizer, prepared.samples, config.eval.sample_tokens,
                                  config.dataset.template, callback)
    trainer = SFTTrainer(model=model, args=args, train_dataset=prepared.train,
                         eval_dataset=prepared.eval, processing_class=tokenizer,
                         peft_config=peft_config,
                         callbacks=[callback, *([sampler] if sampler else []), *callbacks])
    padding_free = padding_free_applies(config) and make_padding_free(trainer)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    if qalora_info is not None:  # the codes are buffers, not parameters: count them in
        total += qalora_info["quantized_parameters"]
    callback.checkpoint_need_gb = disk.estimate_checkpoint_gb(trainable)
    adapter_gb = disk.estimate_checkpoint_gb(trainable, optimizer=False)
    stats = dict(prepared.stats)
    if ctx.is_main:
        ctx.events.emit(
            "info", model=config.model.name, device=device,
            dtype=str(dtype).replace("torch.", ""), quantization=config.model.quantization,
            lora_variant=config.lora.variant, lora_r=config.lora.r, lora_alpha=config.lora.alpha,
            trainable_parameters=trainable, total_parameters=total,
            trainable_percent=round(100.0 * trainable / max(total, 1), 4),
            footprint_gb=models.footprint_gb(trainer.model),
            train_rows=stats.get("train_rows", len(prepared.train)),
            eval_rows=stats.get("eval_rows", len(prepared.eval) if prepared.eval else 0),
            truncated_rows=stats.get("truncated_rows", 0), dropped_rows=stats.get("dropped_rows", 0),
            batch_size=t.batch_size, grad_accum=t.grad_accum,
            effective_batch=t.batch_size * t.grad_accum * ctx.world_size,
            num_processes=ctx.world_size, gradient_checkpointing=t.gradient_checkpointing,
            padding_free=padding_free,
            resumed_from=str(resume_from) if resume_from else None, dataset=stats,
            **({"qalora": qalora_info} if qalora_info else {}))
    check_disk(run.dir, callback.checkpoint_need_gb + adapter_gb,
               "checkpoints and the adapter")

    started = time.time()
    stop_now = ctx.stop_requested()
    if ctx.world_size > 1:
        stop_now = agree([stop_now], args.device)[0]
    if stop_now:
        step = int(resume_from.name.rsplit("-", 1)[1]) if resume_from else 0
        return Outcome(stopped=True, step=step, extra={"before_start": True})

    ctx.phase("training", f"training {trainable:,} of {total:,} parameters on {device}")
    ctx.training = True
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    step = trainer.state.global_step
    max_steps = trainer.state.max_steps
    if callback.stopping:
        return Outcome(stopped=True, step=step, max_steps=max_steps,
                       train_loss=callback.last_loss, eval_loss=callback.last_eval_loss,
                       runtime_s=round(time.time() - started, 2))

    if prepared.eval is not None and callback.last_eval_step != step:
        trainer.evaluate()  # a final eval loss, logged as a metrics event by the callback
    ctx.phase("saving", f"saving the adapter to {run.adapter_dir}")
    check_disk(run.dir, adapter_gb, "the final adapter")
    save_final_adapter(trainer, run.adapter_dir)
    if ctx.is_main:
        templates.save_tokenizer(tokenizer, run.adapter_dir)
    barrier()
    del trainer, model
    if device == "cuda":
        torch.cuda.empty_cache()
    extra = {"sample_seconds": round(sampler.seconds, 2)} if sampler else {}
    return Outcome(stopped=False, step=step, max_steps=max_steps, train_loss=callback.last_loss,
                   eval_loss=callback.last_eval_loss, runtime_s=round(time.time() - started, 2),
                   adapter=run.adapter_dir, extra=extra)
