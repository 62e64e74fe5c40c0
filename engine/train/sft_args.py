"""The run config as PEFT's and TRL's objects: the LoRA config, the SFTConfig (checkpoints in
RUN/checkpoints), Liger kernels, padding-free batches, FSDP. Heavy: the job imports it."""

from __future__ import annotations

import os
from typing import Any

from loradeck.engine.config import Config
from loradeck.engine.runs.store import Run


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


def common_args(config: Config, run: Run, *, device: str, dtype: Any, has_eval: bool
                ) -> dict[str, Any]:
    """The TrainingArguments every method shares (SFT, DPO, KTO, ORPO, GRPO): the training
    section; checkpoints go to RUN/checkpoints."""
    import torch

    t = config.training
    cuda = device == "cuda"
    quantized = config.model.quantization != "none"
    return dict(
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
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=None,  # rotated by CheckpointCallback once the new one is complete
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


def sft_config(config: Config, run: Run, *, device: str, dtype: Any, has_eval: bool):
    """TRL SFTConfig from the training section."""
    from trl import SFTConfig

    t = config.training
    return SFTConfig(**common_args(config, run, device=device, dtype=dtype, has_eval=has_eval),
                     max_length=t.max_length, packing=t.packing, dataset_text_field="text")


def fsdp_enabled(args: Any = None) -> bool:
    """The job runs under FSDP (``accelerate launch --use_fsdp`` sets ACCELERATE_USE_FSDP)."""
    return bool(getattr(args, "fsdp", None)) or \
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
