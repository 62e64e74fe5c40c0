"""PEFT's QA-LoRA forward on loradeck's INT4 layers.

Checked against peft 0.21.2. PEFT has the pooled QA-LoRA forward (``QALoraLinearVariant``:
A reads the input averaged over groups of ``qalora_group_size`` columns) only inside its GPTQ
layer, ``GPTQLoraLinear``, which it dispatches on GPTQ kernels alone. Two names that are not
public API carry it onto ``Int4Linear``:

- ``peft.tuners.lora.gptq.GPTQLoraLinear``, subclassed as-is: its forward runs the base layer,
  then the variant's pooled update; it never merges, which suits a base held as codes;
- ``LoraConfig._register_custom_module``, PEFT's experimental hook that dispatches a layer
  class to a LoRA class, here ``Int4Linear`` to ``Int4LoraLinear``.
"""

from __future__ import annotations

from typing import Any

CHECKED_WITH = {"peft": "0.21.2"}


def lora_class() -> type:
    """The LoRA layer PEFT wraps an ``Int4Linear`` in (GPTQLoraLinear: pooled QA-LoRA forward,
    no merge)."""
    from peft.tuners.lora.gptq import GPTQLoraLinear

    class Int4LoraLinear(GPTQLoraLinear):
        """A QA-LoRA adapter on an ``Int4Linear``."""

    Int4LoraLinear.__qualname__ = "Int4LoraLinear"
    return Int4LoraLinear


_LORA_CLASS: type | None = None


def register(lora_config: Any) -> Any:
    """Make ``lora_config`` dispatch ``Int4Linear`` layers to the QA-LoRA layer; returns it."""
    global _LORA_CLASS
    from loradeck.engine.quant.layers import Int4Linear

    if _LORA_CLASS is None:
        _LORA_CLASS = lora_class()
    lora_config._register_custom_module({Int4Linear: _LORA_CLASS})
    return lora_config


def is_qalora_layer(module: Any) -> bool:
    return _LORA_CLASS is not None and isinstance(module, _LORA_CLASS)


def pooled_scale(module: Any, adapter: str) -> float:
    """The factor the variant's forward applies to the pooled input on top of the mean
    (``x_pooled * pooled_features``), so that a fold reproduces it."""
    return float(module.in_features // module.qalora_group_size[adapter])
