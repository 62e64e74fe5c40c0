"""An evaluation's result: what it compared, every answer and score, the best checkpoint,
the judge's tally and the benchmark tasks; written as RUN/eval/<time>.json (everything) and
<time>.md (the table), each under a temporary name and renamed.

Light module: the standard library only.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradeck.engine.enums import EvalMetric
from loradeck.engine.evals.scores import higher_is_better
from loradeck.engine.runs import run_files

EVAL_DIR = "eval"
COLUMNS = ("chrf", "bleu", "rouge_l", "exact", "loss", "answer_tokens", "end_of_turn",
           "json_valid", "judge")
HEADERS = {"chrf": "chrF", "bleu": "BLEU", "rouge_l": "ROUGE-L", "exact": "exact",
           "loss": "loss", "answer_tokens": "tokens", "end_of_turn": "stops",
           "json_valid": "JSON valid", "judge": "judge win"}
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


@dataclass
class EvalResult:
    run: str
    time: str
    source: str
    rows: list[dict[str, Any]]
    max_new_tokens: int
    models: list[dict[str, Any]] = field(default_factory=list)  # {name, scores}
    answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # name -> per row
    best_checkpoint: dict[str, Any] | None = None
    judge: dict[str, Any] | None = None
    tasks: dict[str, Any] | None = None
    arena: dict[str, Any] | None = None
    metric: str = EvalMetric.CHRF

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "time": self.time, "source": self.source,
                "max_new_tokens": self.max_new_tokens, "metric": self.metric,
                "models": self.models, "best_checkpoint": self.best_checkpoint,
                "judge": self.judge, "tasks": self.tasks, "arena": self.arena,
                "rows": [{**row, "answers": {name: self.answers[name][i]
                                             for name in self.answers}}
                         for i, row in enumerate(self.rows)]}

    def scores_of(self, name: str) -> dict[str, Any]:
        return next((m["scores"] for m in self.models if m["name"] == name), {})


def checkpoint_step(name: str) -> int | None:
    m = _CHECKPOINT.fullmatch(name)
    return int(m.group(1)) if m else None


def best_checkpoint(models: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The checkpoint with the best ``metric`` (the earliest among equals), or None when no
    checkpoint has that score."""
    scored = [(m["scores"].get(metric), checkpoint_step(m["name"]), m["name"]) for m in models
              if checkpoint_step(m["name"]) is not None
              and isinstance(m["scores"].get(metric), (int, float))]
    if not scored:
        return None
    sign = 1 if higher_is_better(metric) else -1
    value, step, name = max(scored, key=lambda s: (sign * s[0], -s[1]))
    return {"name": name, "step": step, "metric": str(metric), "value": value}


def best_in_columns(models: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Per score column, the models with the best value (for marking in tables)."""
    out: dict[str, set[str]] = {}
    for col in COLUMNS:
        values = [(m["scores"].get(col), m["name"]) for m in models
                  if isinstance(m["scores"].get(col), (int, float))]
        if len(values) < 2 or col == "answer_tokens":
            continue
        if len({v for v, _ in values}) == 1:
            continue  # all the same: none is best
        pick = max if higher_is_better(col) else min
        best = pick(v for v, _ in values)
        out[col] = {name for v, name in values if v == best}
    return out


def cell(col: str, value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    if col in ("exact", "end_of_turn", "json_valid", "judge"):
        return f"{value:.0%}"
    if col in ("rouge_l", "loss"):
        return f"{value:.3f}"
    return f"{value:.1f}"


def shown_columns(models: list[dict[str, Any]]) -> list[str]:
    return [c for c in COLUMNS if any(m["scores"].get(c) is not None for m in models)]


def markdown_table(models: list[dict[str, Any]]) -> str:
    """The scores as a Markdown table, the best of each column in bold."""
    cols = shown_columns(models)
    best = best_in_columns(models)
    lines = ["| model | " + " | ".join(HEADERS[c] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for m in models:
        cells = [cell(c, m["scores"].get(c)) for c in cols]
        cells = [f"**{v}**" if m["name"] in best.get(c, ()) else v for c, v in zip(cols, cells,
                                                                                   strict=True)]
        lines.append(f"| {m['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(result: EvalResult) -> str:
    out = [f"# Evaluation of run {result.run}", "",
           f"{len(result.rows)} rows ({result.source}), greedy, at most "
           f"{result.max_new_tokens} new tokens each, {result.time}.", "",
           markdown_table(result.models), ""]
    if result.best_checkpoint:
        b = result.best_checkpoint
        out += [f"Best checkpoint by {b['metric']}: {b['name']} ({b['value']}).", ""]
    if result.judge:
        j = result.judge
        interval = j.get("interval_95")
        rate = "no valid verdicts" if j.get("win_rate") is None else \
            f"win rate {j['win_rate']:.0%} (95% interval {interval[0]:.0%}–{interval[1]:.0%})"
        out += [f"Judge {j['judge']}: {j['tuned']} against {j['against']}, each prompt in "
                f"both orders: {j['wins']} wins, {j['ties']} ties, {j['losses']} losses, "
                f"{j['invalid']} invalid; {rate}.", ""]
    if result.arena:
        a = result.arena
        out += [f"Blind A/B votes on the Chat screen: {a['line']}.", ""]
    if result.tasks:
        out += ["| task | " + " | ".join(result.tasks["models"]) + " |",
                "|---|" + "---:|" * len(result.tasks["models"])]
        for task, by_model in result.tasks["scores"].items():
            out.append(f"| {task} | " + " | ".join(
                "–" if by_model.get(m) is None else f"{by_model[m]:.3f}"
                for m in result.tasks["models"]) + " |")
        out.append("")
    return "\n".join(out)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    run_files.write_text(tmp, text)
    os.replace(tmp, path)


def save(run_dir: Path, result: EvalResult) -> Path:
    """Write the result's JSON and Markdown files; returns the JSON file's path."""
    folder = run_files.real_dir(Path(run_dir) / EVAL_DIR)
    path = folder / f"{result.time}.json"
    _write(path, json.dumps(result.to_dict(), indent=1, ensure_ascii=False) + "\n")
    _write(path.with_suffix(".md"), markdown(result) + "\n")
    return path


def results(run_dir: Path) -> list[Path]:
    """The run's saved evaluations, oldest first (not a job's hidden request file)."""
    folder = Path(run_dir) / EVAL_DIR
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith(".")) \
        if folder.is_dir() else []


def latest(run_dir: Path) -> dict[str, Any] | None:
    """The newest saved evaluation of the run, read (None when there is none)."""
    for path in reversed(results(run_dir)):
        try:
            return json.loads(run_files.read_text(path))
        except (OSError, ValueError):
            continue
    return None
