"""A pairwise judge: an OpenAI-compatible chat endpoint reads each prompt with the tuned
model's answer and the base's, twice (the tuned answer as A, then as B), so a judge's
preference for a position cancels. A verdict is A, B or tie; anything else is ``invalid``
and never guessed. The win rate counts a tie as half a win, with a 95% Wilson interval.

The judge prompt is a Jinja template (``eval.judge_template``, or the one shipped here).
The endpoint is a URL (key from LORADECK_JUDGE_KEY), or anything ``loradeck api`` serves,
started on loopback for the evaluation and stopped after it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loradeck.engine.enums import JudgeVerdict
from loradeck.engine.errors import LoradeckError

KEY_ENV = "LORADECK_JUDGE_KEY"
DEFAULT_TEMPLATE = Path(__file__).with_name("judge_prompt.jinja")
_VERDICT = re.compile(r"^\W*(?:verdict\W*)?(a|b|tie)\W*$", re.IGNORECASE)
Z95 = 1.959964


def parse_verdict(text: str | None) -> JudgeVerdict:
    """A, B or tie when the reply says exactly that (brackets, a period or 'JudgeVerdict:' around
    it allowed, on its last non-empty line); otherwise invalid."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    if not lines:
        return JudgeVerdict.INVALID
    m = _VERDICT.match(lines[-1].strip())
    if not m:
        return JudgeVerdict.INVALID
    word = m.group(1).lower()
    return JudgeVerdict.TIE if word == "tie" else JudgeVerdict(word.upper())


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (None without observations)."""
    if n <= 0:
        return None
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)
    return round(max(0.0, low), 4), round(min(1.0, high), 4)


@dataclass
class Tally:
    """Verdicts for the tuned model against the base, each judgement counted once."""

    wins: int = 0
    ties: int = 0
    losses: int = 0
    invalid: int = 0

    def add(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    @property
    def valid(self) -> int:
        return self.wins + self.ties + self.losses

    def win_rate(self) -> float | None:
        return round((self.wins + self.ties / 2) / self.valid, 4) if self.valid else None

    def to_dict(self) -> dict[str, Any]:
        interval = wilson(self.wins + self.ties / 2, self.valid)
        return {**asdict(self), "win_rate": self.win_rate(),
                "interval_95": list(interval) if interval else None}

    def line(self) -> str:
        d = self.to_dict()
        rate = "no valid verdicts" if d["win_rate"] is None else (
            f"win rate {d['win_rate']:.0%} (95% {d['interval_95'][0]:.0%}–"
            f"{d['interval_95'][1]:.0%})")
        return (f"{self.wins} wins, {self.ties} ties, {self.losses} losses, {self.invalid} "
                f"invalid: {rate}")


def outcome(verdict: JudgeVerdict, tuned_is_a: bool) -> str:
    """The tuned model's outcome from one verdict."""
    if verdict == JudgeVerdict.INVALID:
        return "invalid"
    if verdict == JudgeVerdict.TIE:
        return "ties"
    return "wins" if (verdict == JudgeVerdict.A) == tuned_is_a else "losses"


def load_template(path: str | Path | None) -> Any:
    """The judge prompt's Jinja template (a missing or broken file: one line)."""
    import jinja2

    source = Path(path).expanduser() if path else DEFAULT_TEMPLATE
    try:
        text = source.read_text(encoding="utf-8")
        return jinja2.Environment(undefined=jinja2.StrictUndefined,
                                  keep_trailing_newline=True).from_string(text)
    except OSError as exc:
        raise LoradeckError(f"cannot read the judge template: {exc.strerror}", kind="config",
                            where="eval.judge_template", hint="give a Jinja file") from None
    except jinja2.TemplateSyntaxError as exc:
        raise LoradeckError(f"the judge template is not valid Jinja: {exc.message}",
                            kind="config", where=f"{source}:{exc.lineno}",
                            hint="fix the template") from None


@dataclass
class Judgement:
    row: int
    tuned_is_a: bool
    verdict: str
    reply: str


@dataclass
class JudgeResult:
    judge: str
    tuned: str
    against: str
    tally: Tally = field(default_factory=Tally)
    judgements: list[Judgement] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"judge": self.judge, "tuned": self.tuned, "against": self.against,
                **self.tally.to_dict(), "judgements": [asdict(j) for j in self.judgements]}


class JudgeClient:
    """The judge: an OpenAI-compatible chat endpoint, through the openai client."""

    def __init__(self, url: str, key: str | None, model: str | None = None) -> None:
        try:
            import openai
        except ImportError:
            raise LoradeckError("the judge needs the openai package", kind="config",
                                hint="pip install 'loradeck[eval]'") from None
        self.url = url.rstrip("/")
        self.client = openai.OpenAI(base_url=self.url, api_key=key or "none", max_retries=2,
                                    timeout=600)
        self.model = model

    def model_name(self) -> str:
        if self.model is None:
            try:
                models = self.client.models.list().data
            except Exception as exc:
                raise LoradeckError(f"the judge at {self.url} did not list its models: "
                                    f"{type(exc).__name__}", kind="network", where="--judge",
                                    hint="check the address and LORADECK_JUDGE_KEY") from None
            if not models:
                raise LoradeckError(f"the judge at {self.url} serves no model",
                                    kind="network", where="--judge")
            self.model = models[0].id
        return self.model

    def ask(self, prompt: str, max_tokens: int = 16) -> str:
        reply = self.client.chat.completions.create(
            model=self.model_name(), messages=[{"role": "user", "content": prompt}],
            temperature=0, max_tokens=max_tokens)
        return reply.choices[0].message.content or ""


def judge_pairs(ask: Callable[[str], str], template: Any, rows: Sequence[Any],
                tuned: Sequence[str], other: Sequence[str], *, judge: str, tuned_name: str,
                other_name: str, progress: Callable[[int], None] | None = None
                ) -> JudgeResult:
    """Judge every row in both orders; ``ask`` sends one prompt and returns the reply."""
    result = JudgeResult(judge, tuned_name, other_name)
    done = 0
    for i, row in enumerate(rows):
        for tuned_is_a in (True, False):
            a, b = (tuned[i], other[i]) if tuned_is_a else (other[i], tuned[i])
            prompt = template.render(prompt=row.text, reference=row.reference or "",
                                     answer_a=a, answer_b=b)
            reply = ask(prompt)
            verdict = parse_verdict(reply)
            result.tally.add(outcome(verdict, tuned_is_a))
            result.judgements.append(Judgement(i, tuned_is_a, str(verdict), reply[:200]))
            done += 1
            if progress:
                progress(done)
    return result


def is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def url_key() -> str | None:
    return os.environ.get(KEY_ENV) or None
