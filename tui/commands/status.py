"""``loradeck status RUN [--json]``: phase, step, loss and liveness of a run."""

from __future__ import annotations

import argparse
import json
import time

from loradeck.engine.runs.store import RunStore
from loradeck.tui.commands.base import Command, add_run
from loradeck.tui.commands.runs import _num


def status(args) -> int:
    run = RunStore().resolve(args.run)
    s = run.summary()
    if args.json:
        print(json.dumps(s, indent=2, ensure_ascii=False))
        return 0
    lines = [("run", s["id"]),
             ("phase", s["phase"] + (f" ({s['message']})" if s["message"] else "")),
             ("step", str(s["step"] or 0)),
             ("max_steps", str(s["max_steps"]) if s["max_steps"] else "-"),
             ("loss", _num(s["loss"])),
             ("eval loss", _num(s["eval_loss"])),
             ("method", s.get("method") or "sft"),
             ("alive", f"yes (pid {s['pid']})" if s["alive"] else "no"),
             ("model", s.get("model") or "-"),
             ("gpus", ",".join(s["gpus"]) if s.get("gpus") else "-"),
             ("adapter", str(run.adapter_dir) if s["has_adapter"] else "-"),
             ("dir", s["dir"])]
    system = s.get("system")
    if system:
        from loradeck.engine.system.sampler import describe

        ago = max(0.0, time.time() - float(system.get("t") or time.time()))
        lines.insert(-1, ("machine", f"{describe(system)} ({ago:.0f} s ago)"))
    key = s.get("key_figure")
    if key:  # the method's own figure: DPO's reward margin, KTO's KL, GRPO's reward
        lines.insert(7, (key["name"], _num(key["value"])))
    if s.get("error"):
        lines.insert(2, ("error", s["error"]))
    for key, value in lines:
        print(f"{key:<10} {value}")
    return 0


class StatusCommand(Command):
    name = "status"
    help = "phase, step, loss and liveness of a run"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run(parser)
        parser.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        return status(args)


COMMAND = StatusCommand()
