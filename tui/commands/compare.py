"""``loradeck compare RUN RUN... [--json]``: loss curves on one chart (plotext), the config keys
that differ, and the final figures side by side."""

from __future__ import annotations

import json
import shutil
from typing import Any

from loradeck.engine.runs.compare import compare
from loradeck.engine.runs.store import RunStore


def _value(value: Any) -> str:
    """A config value as the config file writes it."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if digits else f"{value:,.0f}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)


def chart(data: dict[str, Any], width: int, height: int) -> str:
    """The train (solid) and eval (dots) loss of every run on one plotext chart."""
    import plotext as plt

    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("clear")
    for run in data["runs"]:
        if run["train"]:
            steps, losses = zip(*run["train"], strict=True)
            plt.plot(list(steps), list(losses), label=f"{run['id']} train")
        if run["eval"]:
            steps, losses = zip(*run["eval"], strict=True)
            plt.scatter(list(steps), list(losses), label=f"{run['id']} eval", marker="dot")
    plt.xlabel("step")
    plt.ylabel("loss")
    return plt.build()


def run(args) -> int:
    store = RunStore()
    data = compare([store.resolve(r) for r in args.runs])
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    width = min(shutil.get_terminal_size((100, 30)).columns, 120)
    print(chart(data, width, max(12, args.height)))
    ids = [r["id"] for r in data["runs"]]
    diff = data["config_diff"]
    print()
    if diff:
        print(table(["config", *ids], [[k, *(_value(v) for v in vals)] for k, vals in diff.items()]))
    else:
        print("the configs are the same")
    print()
    rows = [["final loss", *(_cell(r["final_loss"]) for r in data["runs"])],
            ["final eval loss", *(_cell(r["final_eval_loss"]) for r in data["runs"])],
            ["tokens/s", *(_cell(r["tokens_per_second"], 0) for r in data["runs"])],
            ["peak memory GB", *(_cell(r["peak_memory_gb"], 2) for r in data["runs"])],
            ["runtime s", *(_cell(r["runtime_s"], 1) for r in data["runs"])],
            ["phase", *(r["phase"] for r in data["runs"])]]
    print(table(["", *ids], rows))
    return 0
