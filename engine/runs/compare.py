"""Runs side by side: their train and eval loss curves, the config keys where they differ, and
their final losses, tokens/s, peak memory and runtime, all read from the run directories.

Light module: plain Python. The chart is drawn by ``plot`` on any plotext-like object (plotext
itself on the CLI, textual-plotext's in the app).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs.state import fold
from loradeck.engine.runs.store import Run


@dataclass
class RunFigures:
    """One run's curves and figures."""

    id: str
    phase: str
    train: list[tuple[int, float]] = field(default_factory=list)
    eval: list[tuple[int, float]] = field(default_factory=list)
    final_loss: float | None = None
    final_eval_loss: float | None = None
    tokens_per_second: float | None = None
    peak_memory_gb: float | None = None
    runtime_s: float | None = None
    eval_chrf: float | None = None  # the last loradeck eval: the adapter's chrF
    eval_rouge_l: float | None = None
    eval_judge: float | None = None  # its judge win rate against the base
    eval_best: str | None = None  # its best checkpoint
    method: str = "sft"
    key_figure: str | None = None  # the method's own figure, e.g. "reward margin 8.09"


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "columns":
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def figures(run: Run, events: list[dict[str, Any]] | None = None) -> RunFigures:
    """A run's loss curves (the last value at each step: a resume logs some steps again) and
    figures from its events."""
    state = fold(run.events() if events is None else events)
    done = state.done or {}
    runtime = done.get("runtime_s")
    scores = _adapter_scores(state.last_eval)
    return RunFigures(
        id=run.id, phase=state.settled_phase(), train=sorted(state.train_losses.items()),
        eval=sorted(state.eval_losses.items()), final_loss=state.last_loss(),
        final_eval_loss=state.last_eval_loss(),
        tokens_per_second=round(statistics.median(state.speeds), 1) if state.speeds else None,
        peak_memory_gb=state.peak_memory_gb,
        runtime_s=float(runtime) if isinstance(runtime, (int, float)) else None,
        eval_chrf=scores.get("chrf"), eval_rouge_l=scores.get("rouge_l"),
        eval_judge=((state.last_eval or {}).get("judge") or {}).get("win_rate"),
        eval_best=((state.last_eval or {}).get("best_checkpoint") or {}).get("name"),
        method=state.method or "sft",
        key_figure=f"{key[0]} {key[1]:.4g}" if (key := state.key_figure()) else None)


def _adapter_scores(last_eval: dict[str, Any] | None) -> dict[str, Any]:
    """The tuned adapter's scores in the run's last evaluation (empty when none)."""
    for model in (last_eval or {}).get("models") or []:
        if isinstance(model, dict) and model.get("name") == "adapter":
            return model.get("scores") or {}
    return {}


def config_diff(configs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The dotted keys whose values are not the same in every config, with each run's value."""
    flat = [flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f})
    return {k: [f.get(k) for f in flat] for k in keys
            if len({repr(f.get(k)) for f in flat}) > 1}


FIGURES = (("final loss", "final_loss", 4), ("final eval loss", "final_eval_loss", 4),
           ("tokens/s", "tokens_per_second", 0), ("peak memory GB", "peak_memory_gb", 2),
           ("runtime s", "runtime_s", 1), ("eval chrF", "eval_chrf", 1),
           ("eval ROUGE-L", "eval_rouge_l", 3), ("judge win rate", "eval_judge", 2),
           ("best checkpoint", "eval_best", 0), ("method", "method", 0),
           ("method figure", "key_figure", 0), ("phase", "phase", 0))
"""The figures compared: (label, RunFigures field, decimals)."""


def value_text(value: Any) -> str:
    """A config value as the config file writes it."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def figure_text(value: Any, digits: int) -> str:
    """A figure with ``digits`` decimals (thousands grouped)."""
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return value_text(value)


def figure_rows(data: dict[str, Any]) -> list[list[str]]:
    """One row per figure: its label, then each run's value."""
    return [[label, *(figure_text(r[key], digits) for r in data["runs"])]
            for label, key, digits in FIGURES]


LABEL_CHARS = 14
COLOURS = ((86, 156, 214), (229, 115, 115), (129, 199, 132), (255, 183, 77),
           (186, 104, 200), (77, 208, 225))
"""One colour per run (RGB: plotext and Rich both take it), then round again."""
MARKERS = ("hd", "x", "+", "o", "*", "#")
"""One train-line marker per run, so the curves stay apart without colour too."""


def short_ids(ids: list[str]) -> list[str]:
    """Run ids told apart by their ends: the dash-separated start they share is dropped
    (``…123240``, ``…123256`` for two runs of one model and day), and each is cut from the
    left to LABEL_CHARS."""
    parts = [i.split("-") for i in ids]
    shared = 0
    while all(len(p) > shared + 1 for p in parts) and len({p[shared] for p in parts}) == 1:
        shared += 1
    labels = []
    for whole, p in zip(ids, parts, strict=True):
        label = "-".join(p[shared:])
        if shared:
            label = "…" + label
        if len(label) > LABEL_CHARS:
            label = "…" + label[-(LABEL_CHARS - 1):]
        labels.append(label if len(set(ids)) == len(ids) else whole)
    return labels if len(set(labels)) == len(labels) else ids


def series(data: dict[str, Any]) -> list[dict[str, Any]]:
    """What the chart draws and its legend names: per run, its label, colour and marker."""
    labels = short_ids([r["id"] for r in data["runs"]])
    return [{"label": label, "colour": COLOURS[i % len(COLOURS)],
             "marker": MARKERS[i % len(MARKERS)], "train": run["train"], "eval": run["eval"]}
            for i, (label, run) in enumerate(zip(labels, data["runs"], strict=True))]


def legend(data: dict[str, Any], full: bool = False) -> list[tuple[str, tuple[int, int, int]]]:
    """The legend, drawn beside the chart rather than over its curves: (text, colour); with
    ``full`` the whole run ids."""
    ids = [r["id"] for r in data["runs"]]
    return [(f"{s['marker'] if s['marker'] != 'hd' else '▀'} {ids[i] if full else s['label']} "
             "train" + (" · ● eval" if s["eval"] else ""), s["colour"])
            for i, s in enumerate(series(data))]


def plot(plt: Any, data: dict[str, Any]) -> None:
    """Every run's train loss (a line) and eval loss (points) on one chart; the legend is
    ``legend``'s, outside the plot area."""
    plt.clear_figure()
    for s in series(data):
        if s["train"]:
            steps, losses = zip(*s["train"], strict=True)
            plt.plot(list(steps), list(losses), color=s["colour"], marker=s["marker"])
        if s["eval"]:
            steps, losses = zip(*s["eval"], strict=True)
            plt.scatter(list(steps), list(losses), color=s["colour"], marker="●")
    plt.xlabel("step")
    plt.ylabel("loss")


def compare(runs: list[Any]) -> dict[str, Any]:
    """Two or more runs side by side (what ``loradeck compare --json`` prints)."""
    if len(runs) < 2:
        raise LoradeckError("compare needs two runs or more", kind="usage",
                            hint="name two run ids (or unique prefixes): loradeck compare A B")
    if len({r.id for r in runs}) < len(runs):
        raise LoradeckError("the same run is named twice", kind="usage",
                            hint="name different runs")
    configs = []
    for run in runs:
        try:
            configs.append(run.config().to_dict())
        except LoradeckError:
            configs.append({})
    return {"runs": [asdict(figures(r)) for r in runs], "config_diff": config_diff(configs)}


def sweep_runs(runs: list[Run], name: str) -> list[Run]:
    """The runs of sweep ``name`` (``loradeck queue add --sweep``), oldest first; one line
    naming the sweeps there are when none matches."""
    states = [(r, r.state()) for r in runs]  # each state.json read once
    found = [(r, st) for r, st in states if st.get("sweep") == name]
    if not found:
        names = sorted({s for _, st in states if isinstance(s := st.get("sweep"), str)})
        raise LoradeckError(f"no run belongs to a sweep named {name!r}", kind="usage",
                            where="--sweep", hint=f"sweeps: {', '.join(names)}" if names
                            else "make one with: loradeck queue add CONFIG --sweep K=V1,V2")
    return [r for r, _ in sorted(found, key=lambda p: (p[1].get("created") or 0, p[0].id))]


def _ranks(values: list[float | None], best_low: bool) -> list[int | None]:
    """1 for the best; None for a run without the figure (ties share a rank)."""
    return [None if v is None else 1 + sum(1 for k in values if k is not None and
                                           (k < v if best_low else k > v)) for v in values]


def rank_sweep(runs: list[Run], name: str) -> dict[str, Any]:
    """A sweep's runs ranked by eval loss (lowest first) and, when they were evaluated, by
    their adapter's chrF (highest first), with each run's swept values."""
    rows = []
    for run in runs:
        fig = figures(run)
        values = run.state().get("sweep_values")
        rows.append({"id": run.id, "values": values if isinstance(values, dict) else {},
                     "phase": fig.phase, "eval_loss": fig.final_eval_loss,
                     "loss": fig.final_loss, "eval_chrf": fig.eval_chrf,
                     "eval_judge": fig.eval_judge})
    for row, rank in zip(rows, _ranks([r["eval_loss"] for r in rows], True), strict=True):
        row["rank_eval_loss"] = rank
    evaluated = any(r["eval_chrf"] is not None for r in rows)
    for row, rank in zip(rows, _ranks([r["eval_chrf"] for r in rows], False), strict=True):
        row["rank_eval_chrf"] = rank if evaluated else None
    rows.sort(key=lambda r: (r["rank_eval_loss"] is None, r["rank_eval_loss"] or 0))
    keys = list(dict.fromkeys(k for r in rows for k in r["values"]))
    return {"sweep": name, "keys": keys, "evaluated": evaluated, "runs": rows}


def sweep_table(ranking: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The ranking as a header and rows: rank, run, each swept key, the figures."""
    header = ["rank", "run", *(k.rsplit(".", 1)[-1] for k in ranking["keys"]), "eval loss",
              "train loss"]
    if ranking["evaluated"]:
        header += ["chrF", "chrF rank", "judge win"]
    header.append("phase")
    table = []
    for r in ranking["runs"]:
        row = [value_text(r["rank_eval_loss"]), r["id"],
               *(value_text(r["values"].get(k)) for k in ranking["keys"]),
               figure_text(r["eval_loss"], 4), figure_text(r["loss"], 4)]
        if ranking["evaluated"]:
            row += [figure_text(r["eval_chrf"], 1), value_text(r["rank_eval_chrf"]),
                    figure_text(r["eval_judge"], 2)]
        table.append([*row, r["phase"]])
    return header, table
