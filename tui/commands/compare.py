"""``loradeck compare RUN RUN... [--json]``: loss curves on one chart (plotext), the config keys
that differ, and the final figures side by side."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs.compare import (
    compare,
    figure_rows,
    legend,
    plot,
    rank_sweep,
    sweep_runs,
    sweep_table,
    value_text,
)
from loradeck.engine.runs.store import RunStore
from loradeck.tui.commands.base import Command


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows])


def colour_wanted(stream=None) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (any value) or TERM=dumb."""
    stream = stream or sys.stdout
    return (stream.isatty() and not os.environ.get("NO_COLOR")
            and os.environ.get("TERM") != "dumb")


def chart(data: dict, width: int, height: int, colour: bool = True) -> str:
    import plotext as plt

    plot(plt, data)
    plt.plotsize(width, height)
    plt.theme("clear")
    text = plt.build()
    return text if colour else plt.uncolorize(text)


def show(args) -> int:
    store = RunStore()
    if args.sweep:
        if args.runs:
            raise LoradeckError("name runs or --sweep NAME, not both", kind="usage",
                                where="--sweep", hint="loradeck compare --sweep NAME")
        runs = sweep_runs(store.list(), args.sweep)
        ranking = rank_sweep(runs, args.sweep)
        data = compare(runs) if len(runs) > 1 else None
        if args.json:
            print(json.dumps({**(data or {}), "sweep": ranking}, indent=2, ensure_ascii=False))
            return 0
        print(f"sweep {args.sweep}: {len(runs)} run(s), best eval loss first")
        print(table(*sweep_table(ranking)))
        if data is None:
            return 0
        print()
    else:
        if len(args.runs) < 2:
            raise LoradeckError("compare needs two runs or more", kind="usage",
                                hint="name two run ids (or unique prefixes), or --sweep NAME")
        data = compare([store.resolve(r) for r in args.runs])
        if args.json:
            print(json.dumps(data, indent=2, ensure_ascii=False))
            return 0
    width = min(shutil.get_terminal_size((100, 30)).columns, 120)
    colour = colour_wanted()
    print(chart(data, width, max(12, args.height), colour))
    for text, (r, g, b) in legend(data, full=True):
        print(f"\x1b[38;2;{r};{g};{b}m{text}\x1b[0m" if colour else text)
    ids = [r["id"] for r in data["runs"]]
    diff = data["config_diff"]
    print()
    if diff:
        print(table(["config", *ids],
                    [[k, *(value_text(v) for v in vals)] for k, vals in diff.items()]))
    else:
        print("the configs are the same")
    print()
    print(table(["", *ids], figure_rows(data)))
    return 0


class CompareCommand(Command):
    name = "compare"
    help = "loss curves, config differences and figures of runs side by side"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("runs", metavar="RUN", nargs="*",
                            help="two or more run ids or prefixes")
        parser.add_argument("--sweep", metavar="NAME",
                            help="the runs of a sweep (loradeck queue add --sweep), ranked by "
                                 "eval loss and eval score, the swept values as columns")
        parser.add_argument("--json", action="store_true", help="the same data for scripts")
        parser.add_argument("--height", type=int, default=20, help="chart height in lines")

    def run(self, args: argparse.Namespace) -> int:
        return show(args)


COMMAND = CompareCommand()
