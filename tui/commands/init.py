"""``loradeck init``: write a commented starter config."""

from __future__ import annotations

from pathlib import Path

from loradeck.engine import config as cfg
from loradeck.engine.errors import LoradeckError


def run(args) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        raise LoradeckError("file exists", kind="usage", where=str(path),
                            hint="choose another path or add --force")
    text = cfg.starter_text(demo=args.demo)
    cfg.validate(__import__("yaml").safe_load(text), source="starter")  # never write a bad one
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}; start it with: loradeck train {path}")
    return 0
