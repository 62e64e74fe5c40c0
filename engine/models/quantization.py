"""What ``model.quantization: auto`` chooses: 4-bit (QLoRA) on a CUDA GPU, 16-bit on a CPU,
where 4-bit runs several times slower. The job resolves it on the device it trains on and
writes the choice into the run's config; doctor, estimate and preflight say it beforehand.
Light module: no torch (the planned device comes from nvidia-smi)."""

from __future__ import annotations

from typing import Any

from loradeck.engine.enums import Quantization

AUTO = Quantization.AUTO


def choose(requested: str, device: str, *, variant: str = "lora", distributed: str = "none",
           processes: Any = 1) -> tuple[str, str | None]:
    """The quantization that runs, and for ``auto`` why (None when it was asked for)."""
    if requested != AUTO:
        return requested, None
    if device != "cuda":
        return "none", "no CUDA GPU, and 16-bit trains several times faster than 4-bit on a CPU"
    if variant == "qalora":
        return "none", "lora.variant qalora quantizes the base itself"
    if distributed == "fsdp" and processes != 1:
        return "none", "FSDP shards 16-bit weights"
    return "4bit", "a CUDA GPU, where 4-bit (QLoRA) fits the largest model in its memory"


def for_config(config: Any, device: str) -> tuple[str, str | None]:
    """``choose`` with the config's own settings."""
    t = config.training
    return choose(config.model.quantization, device, variant=config.lora.variant,
                  distributed=t.distributed, processes=t.num_processes)


def resolved(config: Any, device: str) -> tuple[Any, str | None]:
    """A copy of ``config`` with ``auto`` replaced by what it chooses on ``device``, and why."""
    quant, why = for_config(config, device)
    if why is None:
        return config, None
    model = config.model.model_copy(update={"quantization": quant})
    return config.model_copy(update={"model": model}), why


def planned_device(training_device: str) -> str:
    """cuda or cpu: where a job with ``training.device`` will train, without importing torch."""
    if training_device in ("cpu", "cuda"):
        return training_device
    from loradeck.engine.system import gpus

    return "cuda" if gpus.visible_count() > 0 else "cpu"


def line(quant: str, why: str | None) -> str:
    """``none (auto: no CUDA GPU, ...)`` or just ``4bit``."""
    return f"{quant} (auto: {why})" if why else quant
