"""Finished runs built without training, for tests of chat, merge and push.

``make_finished_run()`` creates a run directory the way a completed training job leaves it:
config.yaml, state.json, events.jsonl (loss history, done event, status done) and adapter/
(a PEFT LoRA adapter on demo:tiny with seeded nonzero weights, so it changes the model's output,
plus the tokenizer and chat template).
"""

from __future__ import annotations

from pathlib import Path

from loradeck.engine import config as cfg
from loradeck.engine.runs.events import EventWriter
from loradeck.engine.runs.store import Run, RunStore

LOSSES = [(2, 6.91, None), (4, 6.52, None), (6, 6.20, 6.31), (8, 5.94, None), (10, 5.71, 5.88)]


def demo_run_config(quantization: str = "none", name: str | None = None) -> cfg.Config:
    """The demo config (demo:tiny, demo dataset) with ``quantization`` and an optional name."""
    data = cfg.demo_config().to_dict()
    data["model"]["quantization"] = quantization
    data["lora"]["r"] = 8
    data["lora"]["alpha"] = 16
    data["training"]["max_steps"] = 10
    data["run"]["name"] = name
    return cfg.validate(data, source="test")


def build_adapter(config: cfg.Config, target: Path, seed: int = 0, scale: float = 0.05) -> Path:
    """Save a LoRA adapter for ``config``'s model into ``target`` with seeded weights.

    A 4-bit or 8-bit config gets its adapter on the quantized base (as QLoRA training does).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from loradeck.engine.models.loading import load_model, load_tokenizer

    base = load_model(config.model, device="cpu")
    lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha,
                      lora_dropout=config.lora.dropout, target_modules=config.lora.target_modules,
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * scale)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    load_tokenizer(config.model).save_pretrained(target)
    return target


def write_finished_events(run: Run, loss_history: bool = True) -> None:
    """Events a completed training job writes, ending with ``done`` and status done."""
    ev = EventWriter(run.events_path)
    ev.status("loading", "loading demo:tiny")
    ev.emit("info", trainable_parameters=40960, total_parameters=700000, device="cpu",
            train_rows=45, eval_rows=5)
    ev.status("training", "training")
    last_loss = last_eval = None
    if loss_history:
        for step, loss, eval_loss in LOSSES:
            fields = {"step": step, "max_steps": 10, "epoch": step / 10, "loss": loss,
                      "learning_rate": 2e-4}
            if eval_loss is not None:
                fields["eval_loss"] = eval_loss
                last_eval = eval_loss
            ev.emit("metrics", **fields)
            last_loss = loss
    ev.status("saving", "saving the adapter")
    ev.emit("done", adapter=str(run.adapter_dir), train_loss=last_loss, eval_loss=last_eval,
            runtime_s=12.5)
    ev.status("done", "training finished")


def make_finished_run(quantization: str = "none", loss_history: bool = True, *,
                      root: str | Path | None = None, name: str | None = None,
                      seed: int = 0, adapter: bool = True) -> Run:
    """A run directory as a finished training job leaves it (under ``root`` or the store)."""
    config = demo_run_config(quantization, name)
    run = RunStore(root).create(config)
    if adapter:
        build_adapter(config, run.adapter_dir, seed=seed)
    write_finished_events(run, loss_history=loss_history)
    run.update_state(phase="done")
    return run
