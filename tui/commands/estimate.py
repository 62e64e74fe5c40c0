"""``loradeck estimate CONFIG``: peak GPU memory of a run, whether it fits, what would make it.

Exit status 0 when it fits (or nothing to compare with), 3 when it does not fit.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from loradeck.engine import config as cfg
from loradeck.engine.errors import LoradeckError
from loradeck.engine.models import quantization
from loradeck.engine.train import estimate as est
from loradeck.tui.commands.base import Command, ConfigKeysHelp, add_set

DOES_NOT_FIT = 3


def _load(path: str, overrides: list[str]) -> cfg.Config:
    if path == "demo" and not os.path.exists(path):
        return cfg.from_overrides(overrides, base=cfg.demo_config())
    return cfg.load(path, overrides)


def _gpus(config: cfg.Config) -> list[Any]:
    """The GPUs the run would use (the first num_processes ones); [] without CUDA."""
    try:
        from loradeck.engine.system.doctor import list_gpus, nvidia_present

        gpus = list_gpus() if nvidia_present() else []
    except Exception:
        return []
    n = config.training.num_processes
    return gpus if n == "all" else gpus[: int(n)]


def estimate(args) -> int:
    config = _load(args.config, args.overrides)
    name = config.model.name
    shape = est.shape_for(name, config.model.revision)
    if shape is None:
        raise LoradeckError(f"no config.json found for {name!r} (not a local directory, not in "
                            "the Hugging Face cache) to estimate from", kind="model",
                            where="model.name", hint=f"fetch it with `hf download {name} "
                            "config.json`, or point model.name at a local model directory")
    gpus = [] if args.gpu_memory is not None or config.training.device == "cpu" \
        else _gpus(config)
    # auto: as on a GPU when one is found or its memory given, else as on this CPU
    on_gpu = config.training.device != "cpu" and (bool(gpus) or args.gpu_memory is not None)
    config, auto_why = quantization.resolved(config, "cuda" if on_gpu else "cpu")
    bf16 = all(g.bf16 for g in gpus) if gpus else True
    settings = est.Settings.from_config(config, bf16_supported=bf16, num_gpus=max(1, len(gpus)))
    result = est.estimate(shape, settings)

    if args.gpu_memory is not None:
        free: float | None = float(args.gpu_memory)
        source = f"--gpu-memory {free:g} GB"
    elif gpus:
        tightest = min(gpus, key=lambda g: g.free_gb if g.free_gb is not None else g.total_gb)
        free = tightest.free_gb if tightest.free_gb is not None else tightest.total_gb
        source = f"GPU {tightest.index} ({tightest.name})"
    else:
        free, source = None, None
    verdict = result.fits(free) if free is not None else None

    if args.json:
        print(json.dumps({
            "config": args.config, "model": name, "shape": shape.to_dict(),
            "settings": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in settings.__dict__.items()},
            "estimate": result.to_dict(),
            "quantization": config.model.quantization, "quantization_auto": auto_why,
            "gpus": [g.to_dict() for g in gpus], "free_gb": free, "compared_with": source,
            "fits": verdict.fits if verdict else None,
            "verdict": verdict.to_dict() if verdict else None,
        }, indent=2))
        return DOES_NOT_FIT if verdict and not verdict.fits else 0

    print(f"loradeck estimate: {name}")
    if auto_why:
        print(f"  model.quantization {quantization.line(config.model.quantization, auto_why)}")
    for line in result.lines():
        print(f"  {line}" if line else "")
    for note in result.notes:
        print(f"  note: {note}")
    print()
    for g in gpus:
        free_txt = f"{g.free_gb:.1f} GB free of " if g.free_gb is not None else ""
        print(f"GPU {g.index}: {g.name}, {free_txt}{g.total_gb:.1f} GB, bf16 "
              f"{'yes' if g.bf16 else 'no'}")
    if verdict is None:
        if config.training.device == "cpu":
            print("training.device is cpu: GPU memory does not apply "
                  "(compare with --gpu-memory GB)")
        else:
            print("no GPU found: compare with --gpu-memory GB")
        return 0
    print(f"{verdict.message} (compared with {source})")
    if not verdict.fits:
        fitting = [s for s in verdict.suggestions if s.fits]
        short = [s for s in verdict.suggestions if not s.fits]
        for title, group in (("changes that make it fit:", fitting),
                             ("not enough on their own:" if fitting else
                              "no change here makes it fit; the closest:", short)):
            if group:
                print(title)
            for s in group:
                print(f"  {s.label}: ~{s.total_gb:.1f} GB")
                print(f"      {' '.join(f'--set {a}' for a in s.set_args())}")
        if not fitting:
            print("  or use a GPU with more memory, a smaller model, or several GPUs with "
                  "training.distributed: fsdp")
        return DOES_NOT_FIT
    return 0


class EstimateCommand(Command):
    name = "estimate"
    help = "estimate peak GPU memory of a config"
    formatter = ConfigKeysHelp

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", metavar="CONFIG")
        add_set(parser)
        parser.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                            help="compare with this much free GPU memory instead of the GPUs "
                                 "found")
        parser.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        return estimate(args)


COMMAND = EstimateCommand()
