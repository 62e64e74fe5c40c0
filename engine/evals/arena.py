"""Blind A/B votes from the Chat screen: both sides answer a prompt under the labels A and B
in a random order; a person votes A, B or tie, and each vote is appended to RUN/arena.jsonl
with which side each label stood for. The win rate is the tuned side's, a tie counting half.

Light module: the standard library only.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradeck.engine.enums import JudgeVerdict
from loradeck.engine.evals.judge import Tally, outcome
from loradeck.engine.runs import run_files
from loradeck.engine.runs.events import parse_lines

ARENA_FILE = "arena.jsonl"
TUNED, BASE = "tuned", "base"


@dataclass
class Round:
    """One blind round: which side answers under A (the other under B)."""

    a_is_tuned: bool

    @classmethod
    def drawn(cls, rng: random.Random | None = None) -> Round:
        return cls((rng or random.SystemRandom()).random() < 0.5)

    def side(self, label: str) -> str:
        """The side (tuned or base) label A or B stands for."""
        return TUNED if (label == "A") == self.a_is_tuned else BASE


def path(run_dir: Path) -> Path:
    return Path(run_dir) / ARENA_FILE


def record(run_dir: Path, round_: Round, verdict: JudgeVerdict, prompt: str,
           answers: dict[str, str], tuned: str, base: str) -> dict[str, Any]:
    """Append one vote (``answers`` by label) to RUN/arena.jsonl."""
    vote = {"t": round(time.time(), 3), "vote": str(verdict), "a": round_.side("A"),
            "b": round_.side("B"), "tuned": tuned, "base": base, "prompt": prompt,
            "answer_a": answers.get("A", ""), "answer_b": answers.get("B", "")}
    with run_files.append_handle(path(run_dir)) as fh:
        fh.write((json.dumps(vote, ensure_ascii=False) + "\n").encode("utf-8"))
    return vote


def votes(run_dir: Path) -> list[dict[str, Any]]:
    try:
        return parse_lines(run_files.read_text(path(run_dir)))
    except FileNotFoundError:
        return []


def tally(run_dir: Path) -> Tally:
    """The tuned side's wins, ties and losses over every vote so far."""
    out = Tally()
    for vote in votes(run_dir):
        try:
            verdict = JudgeVerdict(vote.get("vote"))
        except ValueError:
            continue
        out.add(outcome(verdict, vote.get("a") == TUNED))
    return out


def summary(run_dir: Path) -> dict[str, Any] | None:
    """The votes' tally for a report (None when nobody voted)."""
    t = tally(run_dir)
    if not t.valid and not t.invalid:
        return None
    return {**t.to_dict(), "line": t.line()}
