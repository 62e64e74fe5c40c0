"""``loradeck doctor``: GPUs, CUDA, bitsandbytes, disk, Hub login and versions (never a token)."""

from __future__ import annotations

import json

from loradeck.engine.system import doctor


def run(args) -> int:
    rep = doctor.report()
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print("loradeck doctor")
        for line in doctor.text(rep):
            print(f"  {line}")
    return 0
