"""Refuse a run before it starts when this machine cannot do what its config asks.

``check(config)`` raises LoradeckError(kind="config" or "disk") with the reason and what to
change, and returns warnings (things that may go wrong but need not). The hardware facts come
from ``doctor.DeviceInfo.for_preflight()`` (the 4-bit probe cached per versions and devices)
unless a DeviceInfo is passed (tests simulate a V100 or a broken bitsandbytes that way).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from loradeck.engine.config import Config
from loradeck.engine.errors import LoradeckError
from loradeck.engine.models import quantization
from loradeck.engine.runs import paths
from loradeck.engine.system.doctor import DeviceInfo
from loradeck.engine.train import disk, estimate


def _device(config: Config, dev: DeviceInfo) -> str:
    want = config.training.device
    if want == "cuda" and not dev.cuda_available:
        raise LoradeckError("training.device is cuda but no CUDA GPU is available", kind="config",
                            where="training.device", hint="set training.device: auto or cpu "
                            "(`loradeck doctor` shows what this machine has)")
    if want == "cpu":
        return "cpu"
    return "cuda" if dev.cuda_available else "cpu"


def _processes(config: Config, dev: DeviceInfo, device: str, warnings: list[str]) -> int:
    """Processes per machine, refusing more GPUs than this machine has."""
    t = config.training
    n_gpus = len(dev.gpus)
    if t.num_processes == "all":
        if device == "cpu":
            warnings.append("training.num_processes is all but there is no GPU: one CPU process")
            return 1
        return n_gpus
    total = int(t.num_processes)
    local = math.ceil(total / t.num_machines)
    if device == "cuda" and local > n_gpus:
        raise LoradeckError(
            f"training.num_processes asks for {local} GPU(s) on this machine but it has {n_gpus}",
            kind="config", where="training.num_processes",
            hint=f"set training.num_processes: {n_gpus * t.num_machines} (or all)")
    if device == "cpu" and local > 1:
        warnings.append(f"{local} processes on the CPU (gloo): slow, meant for testing")
    return local


def _dtype(config: Config, dev: DeviceInfo, device: str, used: list[int]) -> str:
    """The compute dtype that will run, refusing bf16 on GPUs without it and fp16 on CPU."""
    want = config.model.compute_dtype
    gpus = [g for g in dev.gpus if g.index in used] or dev.gpus
    if device == "cuda":
        lacking = [g for g in gpus if not g.bf16]
        if want == "bf16" and lacking:
            g = lacking[0]
            cc = f"{g.capability[0]}.{g.capability[1]}"
            raise LoradeckError(
                f"model.compute_dtype is bf16 but GPU {g.index} ({g.name}, compute capability "
                f"{cc}) has no bf16; bf16 needs compute capability 8.0 or more",
                kind="config", where="model.compute_dtype",
                hint="set model.compute_dtype: fp16 (or auto, which picks fp16 there)")
        if want == "auto":
            return "fp16" if lacking else "bf16"
        return want
    if want == "fp16":
        raise LoradeckError("model.compute_dtype is fp16, which training on the CPU does not "
                            "support", kind="config", where="model.compute_dtype",
                            hint="set model.compute_dtype: auto, fp32 or bf16")
    return "fp32" if want == "auto" else want


def _quantization(config: Config, dev: DeviceInfo, device: str) -> None:
    q = config.model.quantization
    if q == "none":
        return
    if dev.bnb_ok is None:
        dev.bnb_ok, dev.bnb_error = _probe(device)
    if not dev.bnb_ok:
        why = dev.bnb_error or "bitsandbytes does not work here"
        raise LoradeckError(f"model.quantization is {q} but bitsandbytes does not work on "
                            f"{device}: {why}", kind="config", where="model.quantization",
                            hint="set model.quantization: none, or install a bitsandbytes build "
                                 "that matches this machine (`loradeck doctor` checks it)")


def _groups(config: Config, shape: estimate.ModelShape | None) -> None:
    """qalora: each target's input size must split into whole groups."""
    lora = config.lora
    if lora.variant != "qalora" or shape is None:
        return
    every = isinstance(lora.target_modules, str) and lora.target_modules == "all-linear"
    names = [lora.target_modules] if isinstance(lora.target_modules, str) else lora.target_modules
    for name, (n_in, _) in shape.linears().items():
        if (every or name in names) and n_in % lora.group_size:
            raise LoradeckError(f"{name} has {n_in} input columns, not a multiple of "
                                f"{lora.group_size}", kind="config", where="lora.group_size",
                                hint="pick a group size that divides every target's input "
                                     "size (32 divides the most)")


def _probe(device: str) -> tuple[bool, str | None]:
    from loradeck.engine.system.doctor import cached_probe_4bit

    return cached_probe_4bit(device, isolated="torch" not in sys.modules)


def _disk(config: Config, shape: estimate.ModelShape | None, store: Path,
          warnings: list[str]) -> None:
    trainable = estimate.lora_params(shape, estimate.Settings.from_config(config)) if shape \
        else 0
    need = disk.estimate_run_gb(trainable, config.training.save_total_limit)
    disk.check_free(store, need, "the run's checkpoints and adapter",
                    hint="free some space, lower training.save_total_limit, or set "
                         "LORADECK_HOME to a larger disk")
    if shape is not None:
        merged = disk.estimate_merged_gb(shape.total_params())
        free = disk.free_gb(store)
        if free < need + merged:
            warnings.append(f"merging this run later needs about {merged:.1f} GB more disk; "
                            f"{free:.1f} GB is free at {store}")


def _memory(config: Config, shape: estimate.ModelShape, dev: DeviceInfo, dtype: str,
            used: list[int], warnings: list[str]) -> None:
    gpus = [g for g in dev.gpus if g.index in used and g.free_gb is not None]
    if not gpus:
        return
    settings = estimate.Settings.from_config(config, num_gpus=len(dev.gpus)).replace(
        compute_dtype=dtype)
    est = estimate.estimate(shape, settings)
    g = min(gpus, key=lambda x: x.free_gb or 0.0)
    verdict = est.fits(g.free_gb or 0.0)
    if not verdict.fits:
        fix = next((s for s in verdict.suggestions if s.fits), None)
        tip = f"; try --set {' --set '.join(fix.set_args())}" if fix else ""
        warnings.append(f"estimated peak memory ~{est.total_gb:.1f} GB is more than the "
                        f"{g.free_gb:.1f} GB free on GPU {g.index} ({g.name}): likely out of "
                        f"memory{tip} (see `loradeck estimate`)")


TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def liger_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def check_liger(config: Config) -> None:
    """Refuse training.liger: on when the Liger kernels are not installed."""
    if config.training.liger == "on" and not liger_installed():
        raise LoradeckError("is on but the Liger kernels are not installed", kind="config",
                            where="training.liger",
                            hint="install liger-kernel, or set training.liger: off")


def _tracker(config: Config) -> None:
    """Refuse a training.report_to tracker that is not installed (the Trainer would stop)."""
    import importlib.util

    tracker = config.training.report_to
    module = TRACKER_MODULES.get(tracker)
    if module and importlib.util.find_spec(module) is None:
        raise LoradeckError(f"{tracker} is not installed", kind="config",
                            where="training.report_to",
                            hint=f"pip install 'loradeck[{tracker}]', or set training.report_to: "
                                 "none")


def check(config: Config, device: DeviceInfo | None = None, *,
          store: str | Path | None = None) -> list[str]:
    """Raise LoradeckError when ``config`` cannot run here; return warnings otherwise.

    ``device`` defaults to this machine's facts; ``store`` to the run store.
    """
    warnings: list[str] = []
    _tracker(config)
    if device is None:
        # A light caller (the app, the CLI) never loads torch: the 4-bit probe result is cached
        # per versions and devices, and a miss is probed in a child process.
        planned, _ = quantization.resolved(
            config, quantization.planned_device(config.training.device))
        device = DeviceInfo.for_preflight(probe_bnb=planned.model.quantization != "none")
    dev = device
    where = _device(config, dev)
    config, _ = quantization.resolved(config, where)  # what auto will choose there
    local = _processes(config, dev, where, warnings)
    used = list(range(local)) if where == "cuda" else []
    dtype = _dtype(config, dev, where, used)
    _quantization(config, dev, where)
    shape = estimate.shape_for(config.model.name, config.model.revision)
    _groups(config, shape)
    _disk(config, shape, Path(store) if store else paths.runs_dir(), warnings)
    if where == "cuda" and shape is not None:
        _memory(config, shape, dev, dtype, used, warnings)
    return warnings
