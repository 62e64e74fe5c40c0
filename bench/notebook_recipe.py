"""The notebook recipe: QLoRA fine-tuning with TRL's SFTTrainer the way the usual notebook does it.

This is the baseline loradeck is measured against, written as a person copies it from the
common QLoRA notebook: base weights in 4-bit NF4 with double quantization and bf16 compute,
``prepare_model_for_kbit_training``, LoRA r=16 / alpha=32 / dropout 0.05 on every linear layer of
the blocks, each instruction row rendered to one ``### Instruction / ### Context / ### Response``
text, trained on the whole text with padded batches (the collator pads each batch to its longest
row) and no packing, batch 4 x accumulation 4, paged 8-bit AdamW, gradient checkpointing on.

Only what a benchmark must control is a parameter (model directory, rows, steps, device); the
recipe itself is not tuned. On a CPU (no bf16, no paged optimizer) it falls back to fp32 compute
and plain AdamW, which is what the notebook does when run there.

    python bench/notebook_recipe.py --model PATH --data rows.jsonl --max-steps 60 --out OUT_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def format_row(row: dict[str, Any], eos_token: str) -> str:
    """One dolly-style row as the notebook's single training text."""
    text = f"### Instruction:\n{row['instruction']}\n\n"
    if row.get("context"):
        text += f"### Context:\n{row['context']}\n\n"
    return text + f"### Response:\n{row['response']}{eos_token}"


def load_model_and_tokenizer(model_dir: str, device: str = "auto", quantize: bool = True,
                             gradient_checkpointing: bool = True, **model_kwargs: Any):
    """The 4-bit base model ready for k-bit training, and its tokenizer (pad set, right side)."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    cuda = torch.cuda.is_available() and device != "cpu"
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": {"": 0 if cuda else "cpu"},
                              **model_kwargs}
    if quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.config.use_cache = False
    if quantize:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return model, tokenizer


def build_trainer(model_dir: str, rows: list[dict[str, Any]], output_dir: str, *,
                  max_steps: int = -1, batch_size: int = 4, grad_accum: int = 4,
                  max_length: int = 1024, learning_rate: float = 2e-4, logging_steps: int = 25,
                  device: str = "auto", quantize: bool = True, seed: int = 42,
                  sft_overrides: dict[str, Any] | None = None,
                  model_kwargs: dict[str, Any] | None = None):
    """The notebook's SFTTrainer over ``rows`` (instruction/context/response dicts).

    ``sft_overrides`` and ``model_kwargs`` exist for the benchmark's one-change-at-a-time
    measurements (packing, attention implementation, ...); the recipe itself leaves them empty.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    sft_overrides = dict(sft_overrides or {})
    model, tokenizer = load_model_and_tokenizer(
        model_dir, device, quantize, sft_overrides.get("gradient_checkpointing", True),
        **(model_kwargs or {}))
    cuda = next(model.parameters()).is_cuda
    bf16 = cuda and torch.cuda.is_bf16_supported()
    dataset = Dataset.from_list([{"text": format_row(r, tokenizer.eos_token)} for r in rows])
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none",
                             task_type="CAUSAL_LM", target_modules=TARGET_MODULES)
    settings: dict[str, Any] = dict(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        gradient_checkpointing=True,
        optim="paged_adamw_8bit" if cuda else "adamw_torch",
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0.03,
        max_grad_norm=0.3,
        num_train_epochs=1,
        max_steps=max_steps,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to="none",
        bf16=bf16,
        fp16=False,
        use_cpu=not cuda,
        max_length=max_length,
        packing=False,
        dataset_text_field="text",
        seed=seed,
        disable_tqdm=True,
    )
    settings.update(sft_overrides)
    args = SFTConfig(**settings)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=peft_config)


def read_rows(path: str) -> list[dict[str, Any]]:
    """Instruction rows from a JSONL file."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="local model directory")
    p.add_argument("--data", required=True, help="JSONL with instruction, context, response")
    p.add_argument("--out", default="notebook-out")
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--device", choices=["auto", "cpu"], default="auto")
    a = p.parse_args(argv)
    trainer = build_trainer(a.model, read_rows(a.data), a.out, max_steps=a.max_steps,
                            device=a.device)
    trainer.train()
    trainer.model.save_pretrained(Path(a.out) / "adapter")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
