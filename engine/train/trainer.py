"""One training pass of a run: the TRL trainer of its method (SFT, DPO, KTO, ORPO, GRPO) with a
PEFT LoRA config (or the adapter of ``model.adapter``, trained further), events, stop,
checkpoints.

A heavy module: only the job process (``loradeck.engine.train.job``) imports it. ``train_once``
loads, prepares, trains (or resumes) and saves the adapter; it returns an ``Outcome``. The
config's PEFT and TRL objects are in ``sft_args`` and ``methods``, the Trainer's callbacks in
``callbacks``, checkpoint and disk helpers in ``checkpoints``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradeck.engine import config as cfg
from loradeck.engine.data import templates
from loradeck.engine.models import layout, quantization
from loradeck.engine.models import loading as models
from loradeck.engine.patches import cpu_fsdp
from loradeck.engine.train import adapter_source, disk, methods
from loradeck.engine.train import callbacks as callbacks_
from loradeck.engine.train.checkpoints import agree, barrier, check_disk, save_final_adapter
from loradeck.engine.train.context import JobContext
from loradeck.engine.train.sft_args import (
    fsdp_enabled,
    lora_config,
    make_padding_free,
    padding_free_applies,
)


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


# ---- one pass -------------------------------------------------------------------------------

def train_once(ctx: JobContext, resume_from: Path | None = None,
               callbacks: tuple = ()) -> Outcome:
    """Load the model and data, train (from ``resume_from`` when given), save the adapter.

    ``callbacks``: more TrainerCallbacks (benchmarks measure with one)."""
    import torch
    from transformers import set_seed

    from loradeck.engine.data import prep as dataset_prep
    from loradeck.engine.train import method_data

    config, run = ctx.config, ctx.run
    t = config.training
    device = models.pick_device(t.device)
    ctx.device = device
    config, auto_why = quantization.resolved(config, device)
    if auto_why is not None:  # the run's config says what auto chose, for resume and merge
        ctx.config = config
        if ctx.is_main:
            cfg.save(config, run.config_path)
    quantized = config.model.quantization != "none"
    dtype = models.compute_dtype(config.model, device)
    set_seed(t.seed)

    ctx.phase("loading", f"loading {config.model.name}"
              + (f" ({config.model.quantization})" if quantized else "") + f" on {device}")
    tokenizer = models.load_tokenizer(config.model)
    sft = t.method == "sft"
    try:
        if sft:
            prepared = dataset_prep.prepare(config, tokenizer, run_dir=run.dir if ctx.is_main
                                            else None, progress=ctx.log,
                                            should_stop=ctx.stop_requested)
        else:
            prepared = method_data.prepare(config, tokenizer, run_dir=run.dir if ctx.is_main
                                           else None, say=ctx.log)
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
    source = adapter_source.check(config)
    if source is not None:  # a second stage: the adapter trained further, not a new one
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(source.path), is_trainable=True)
        peft_config = None
        ctx.log(f"training further the adapter of {source.describe()}",
                adapter_from=str(source.path), source_run=source.run_id,
                source_checkpoint=source.checkpoint)

    args = methods.method_config(config, run, device=device, dtype=dtype,
                                 has_eval=prepared.eval is not None)
    if fsdp_enabled(args) and device == "cpu":
        cpu_fsdp.apply()
    timer = callbacks_.EvalTimer()
    metrics = callbacks_.MetricsCallback(ctx, timer, resume_from)
    stopper = callbacks_.StopCallback(ctx)
    hooks: list = [metrics, stopper]
    if callbacks_.FaultInjection.wanted():  # tests only: before the stop check and the mark
        hooks.insert(1, callbacks_.FaultInjection(ctx))
    hooks.append(callbacks_.CheckpointCallback(ctx))
    sampler = None
    if sft and prepared.samples and prepared.eval is not None and ctx.world_size == 1:
        sampler = callbacks_.SamplesCallback(ctx, tokenizer, prepared.samples,
                                             config.eval.sample_tokens, config.dataset.template,
                                             timer)
        hooks.append(sampler)
    board = None
    if t.method == "grpo":
        from loradeck.engine.train.rewards import Scoreboard

        board = Scoreboard()
        if config.eval.sample_prompts:
            questions = {q["prompt"]: q["text"] for q in prepared.samples}
            hooks.append(callbacks_.RewardSamplesCallback(ctx, board, questions, t.eval_steps,
                                                          config.eval.sample_prompts))
    trainer = methods.make_trainer(config, model=model, args=args, train=prepared.train,
                                   evaluation=prepared.eval, tokenizer=tokenizer,
                                   peft_config=peft_config, callbacks=[*hooks, *callbacks],
                                   board=board)
    padding_free = sft and padding_free_applies(config) and make_padding_free(trainer)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    if qalora_info is not None:  # the codes are buffers, not parameters: count them in
        total += qalora_info["quantized_parameters"]
    stopper.checkpoint_need_gb = disk.estimate_checkpoint_gb(trainable)
    adapter_gb = disk.estimate_checkpoint_gb(trainable, optimizer=False)
    stats = dict(prepared.stats)
    if ctx.is_main:
        ctx.events.emit(
            "info", model=config.model.name, device=device, method=str(t.method),
            **({"adapter_from": source.describe()} if source is not None else {}),
            dtype=str(dtype).replace("torch.", ""), quantization=config.model.quantization,
            quantization_auto=auto_why,
            lora_variant=config.lora.variant, lora_r=config.lora.r, lora_alpha=config.lora.alpha,
            trainable_parameters=trainable, total_parameters=total,
            trainable_percent=round(100.0 * trainable / max(total, 1), 4),
            footprint_gb=models.footprint_gb(trainer.model),
            train_rows=stats.get("train_rows", len(prepared.train)),
            eval_rows=stats.get("eval_rows", len(prepared.eval) if prepared.eval else 0),
            **{k: stats.get(k) for k in ("kept_rows", "truncated_rows", "dropped_rows",
                                         "first_dropped")},
            batch_size=t.batch_size, grad_accum=t.grad_accum,
            effective_batch=t.batch_size * t.grad_accum * ctx.world_size,
            num_processes=ctx.world_size, gradient_checkpointing=t.gradient_checkpointing,
            padding_free=padding_free,
            resumed_from=str(resume_from) if resume_from else None, dataset=stats,
            **({"qalora": qalora_info} if qalora_info else {}))
    check_disk(run.dir, stopper.checkpoint_need_gb + adapter_gb,
               "checkpoints and the adapter")

    started = time.time()
    stop_now = ctx.stop_requested()
    if ctx.world_size > 1:
        stop_now = agree([stop_now], args.device)[0]
    if stop_now:
        step = int(resume_from.name.rsplit("-", 1)[1]) if resume_from else 0
        return Outcome(stopped=True, step=step, extra={"before_start": True})

    ctx.phase("training", f"training {trainable:,} adapter parameters on the "
                          f"{total - trainable:,}-parameter base model, on {device}")
    ctx.training = True
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    step = trainer.state.global_step
    max_steps = trainer.state.max_steps
    if stopper.stopping:
        return Outcome(stopped=True, step=step, max_steps=max_steps,
                       train_loss=metrics.last_loss, eval_loss=metrics.last_eval_loss,
                       runtime_s=round(time.time() - started, 2))

    if prepared.eval is not None and metrics.last_eval_step != step:
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
    return Outcome(stopped=False, step=step, max_steps=max_steps, train_loss=metrics.last_loss,
                   eval_loss=metrics.last_eval_loss, runtime_s=round(time.time() - started, 2),
                   adapter=run.adapter_dir, extra=extra)
