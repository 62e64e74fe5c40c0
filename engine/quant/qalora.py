"""QA-LoRA on a model: quantize its target layers into group INT4 codes (kept in the run
directory, so resume and merge use the very codes training saw), the PEFT config of the
pooled adapter, and the merge that folds the adapter into the codes' offsets.

Why the fold is exact: the adapter reads its input averaged over each group of columns, so its
update is one number per (row, group), the same for every column of the group; d·q + m + u is
d·q + (m + u), and only the offset m changes. Heavy: imported by jobs and workers only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loradeck.engine.errors import LoradeckError
from loradeck.engine.patches import peft_qalora
from loradeck.engine.quant import int4
from loradeck.engine.quant.layers import Int4Linear

CODES_DIR = "quant"
CODES_FILE = "int4.safetensors"
FORMAT = "loradeck-int4-v1"


def codes_file(run_dir: Path) -> Path:
    """Where a run keeps its base's codes: RUN/quant/int4.safetensors."""
    return Path(run_dir) / CODES_DIR / CODES_FILE


def codes_for(adapter_dir: Path) -> Path | None:
    """The codes an adapter was trained on: its run's (for RUN/adapter and
    RUN/checkpoints/checkpoint-N alike), or None."""
    here = Path(adapter_dir).resolve()
    for d in (here, *here.parents[:2]):
        if (d / CODES_DIR / CODES_FILE).is_file():
            return d / CODES_DIR / CODES_FILE
    return None


def is_qalora_adapter(adapter_dir: str | Path) -> bool:
    try:
        data = json.loads((Path(adapter_dir) / "adapter_config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return bool(data.get("use_qalora"))


# ---- which layers ---------------------------------------------------------------------------

def target_names(model: nn.Module, targets: str | list[str]) -> list[str]:
    """The linear layers ``lora.target_modules`` picks (all-linear: every one but the output
    head, as PEFT picks them)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    every = isinstance(targets, str) and targets.lower() == "all-linear"
    wanted = [targets] if isinstance(targets, str) and not every else list(targets or [])
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        picked = every or any(name == t or name.endswith("." + t) for t in wanted)
        if not picked or (module is head and every):
            continue
        if module is head and tied:
            raise LoradeckError(f"{name} shares its weight with the embeddings, so qalora "
                                "cannot quantize it", kind="config", where="lora.target_modules",
                                hint="leave the output head out of the targets")
        names.append(name)
    if not names:
        raise LoradeckError("matches no linear layer of the model", kind="config",
                            where="lora.target_modules",
                            hint="use all-linear, or names such as [q_proj, v_proj]")
    return names


def check_groups(model: nn.Module, names: list[str], group_size: int) -> None:
    for name in names:
        layer = model.get_submodule(name)
        try:
            int4.check_shape(layer.in_features, group_size, name)
        except ValueError as exc:
            raise LoradeckError(str(exc), kind="config", where="lora.group_size",
                                hint="pick a group size that divides every target's input "
                                     "size (32 divides the most)") from None


def _replace(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


# ---- the codes on disk ----------------------------------------------------------------------

def save_codes(path: Path, layers: dict[str, Int4Linear], group_size: int) -> Path:
    """Write the layers' codes (atomically: a temporary name, then a rename)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        tensors[f"{name}.qweight"] = layer.qweight.detach().cpu().contiguous()
        tensors[f"{name}.scales"] = layer.scales.detach().cpu().contiguous()
        tensors[f"{name}.offsets"] = layer.offsets.detach().cpu().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "group_size": str(group_size),
                                           "layers": json.dumps(sorted(layers))})
    os.replace(tmp, path)
    return path


def load_codes(path: Path) -> tuple[int, dict[str, int4.Codes]]:
    """The group size and the codes of each layer in a codes file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise LoradeckError("not a loradeck INT4 codes file", kind="model", where=str(path))
        group = int(meta["group_size"])
        codes = {name: int4.Codes(f.get_tensor(f"{name}.qweight"), f.get_tensor(f"{name}.scales"),
                                  f.get_tensor(f"{name}.offsets"), group)
                 for name in json.loads(meta["layers"])}
    return group, codes


# ---- the model ------------------------------------------------------------------------------

def quantize_base(model: nn.Module, targets: str | list[str], group_size: int,
                  path: Path, say: Callable[[str], None] = lambda _l: None) -> dict[str, Any]:
    """Put the target layers on INT4 codes: read from ``path`` when it exists (a resume, a
    retry, a merge), else quantized from the loaded weights and written there."""
    names = target_names(model, targets)
    check_groups(model, names, group_size)
    layers: dict[str, Int4Linear] = {}
    if path.is_file():
        group, codes = load_codes(path)
        if group != group_size or sorted(codes) != sorted(names):
            raise LoradeckError("the run's INT4 codes were made for other layers or another "
                                "group size than its config names", kind="config",
                                where=str(path), hint="start a new run for a new lora section")
        for name in names:
            old = model.get_submodule(name)
            layers[name] = Int4Linear(codes[name], old.bias).to(old.weight.device)
            _replace(model, name, layers[name])
        say(f"qalora: {len(names)} layers on the run's INT4 codes (group {group_size})")
    else:
        for name in names:
            layers[name] = Int4Linear.from_linear(model.get_submodule(name), group_size)
            _replace(model, name, layers[name])
        save_codes(path, layers, group_size)
        say(f"qalora: quantized {len(names)} layers to INT4, group {group_size}; codes in "
            f"{path}")
    from loradeck.engine.models.loading import free_memory

    free_memory()
    columns = sum(layer.in_features * layer.out_features for layer in layers.values())
    code_bytes = sum(layer.qweight.numel() + 4 * layer.scales.numel() for layer in layers.values())
    return {"layers": len(layers), "group_size": group_size, "quantized_parameters": columns,
            "codes_bytes": code_bytes, "targets": sorted({n.rsplit(".", 1)[-1] for n in names})}


def load_base(model: nn.Module, path: Path) -> int:
    """Put a freshly loaded base back on the codes in ``path``; returns the group size."""
    group, codes = load_codes(path)
    for name, c in codes.items():
        old = model.get_submodule(name)
        _replace(model, name, Int4Linear(c, old.bias).to(old.weight.device))
    return group


def lora_config(lora: Any, targets: list[str]) -> Any:
    """PEFT's LoraConfig for the pooled QA-LoRA adapter, dispatched onto ``Int4Linear``."""
    from peft import LoraConfig

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=targets, bias=lora.bias, task_type="CAUSAL_LM",
                        use_qalora=True, qalora_group_size=lora.group_size)
    return peft_qalora.register(config)


def load_adapter(base: nn.Module, adapter_dir: Path, codes: Path | None = None) -> Any:
    """base (16-bit, fresh) + the codes + a QA-LoRA adapter, as training ran it."""
    from peft import LoraConfig, PeftModel

    codes = codes or codes_for(adapter_dir)
    if codes is None:
        raise LoradeckError("this QA-LoRA adapter's INT4 codes are missing", kind="model",
                            where=str(adapter_dir),
                            hint=f"its run keeps them in {CODES_DIR}/{CODES_FILE}")
    load_base(base, codes)
    config = peft_qalora.register(LoraConfig.from_pretrained(str(adapter_dir)))
    return PeftModel.from_pretrained(base, str(adapter_dir), config=config)


def fold(peft_model: Any) -> nn.Module:
    """Fold each QA-LoRA update into its base layer's offsets and return the base model: the
    codes and scales are untouched; m += s · (B A) · pool / g per (row, group)."""
    with torch.no_grad():
        for module in peft_model.modules():
            if not peft_qalora.is_qalora_layer(module):
                continue
            base: Int4Linear = module.get_base_layer()
            offsets = base.offsets.to(torch.float32)
            for adapter in module.active_adapters:
                if adapter not in module.lora_A:
                    continue
                a = module.lora_A[adapter].weight.to(torch.float32)
                b = module.lora_B[adapter].weight.to(torch.float32)
                group = module.qalora_group_size[adapter]
                factor = module.scaling[adapter] * peft_qalora.pooled_scale(module, adapter) / group
                offsets = offsets + (b @ a) * factor
            base.set_offsets(offsets)
    return peft_model.unload()


def int4_layers(model: nn.Module) -> dict[str, Int4Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, Int4Linear)}


def dequantize_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Every INT4 layer back to nn.Linear holding d·q + m in ``dtype`` (the 16-bit form)."""
    for name, layer in int4_layers(model).items():
        _replace(model, name, layer.to_linear(dtype))
    return model
