"""GRPO's rewards (``grpo.rewards``): the built-ins, each a small function of the completions
(and the row's columns), and a user's own ``FILE.py:FUNCTION``, which runs the user's code and
so follows the trust_remote_code rule (named before loading, refused without
--trust-remote-code or the app's confirmation).

TRL calls each reward with the completions and every other column of the batch as keyword
lists, and logs it under its function's name (``rewards/NAME/mean`` and ``/std``).
Light module until a file's rewards are loaded (in the job).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loradeck.engine.errors import LoradeckError

Reward = Callable[..., list[float]]
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def final_answer(text: str) -> str:
    """The answer a completion ends with: after ``####`` (GSM8K), inside ``\\boxed{}``, after
    "answer:", else its last non-empty line."""
    if "####" in text:
        return text.rsplit("####", 1)[1].strip()
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    lowered = text.lower()
    if "answer:" in lowered:
        return text[lowered.rindex("answer:") + len("answer:"):].strip()
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def same_answer(completion: str, answer: Any) -> bool:
    """The completion's final answer equals ``answer``: numerically when both are numbers,
    else as text (case and surrounding space aside)."""
    said, want = final_answer(completion), str(answer).strip()
    a, b = _number(said), _number(want)
    if a is not None and b is not None and _NUMBER.fullmatch(want.replace(" ", "")):
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    return said.strip().strip(".").lower() == want.strip(".").lower()


def exact_answer(completions: list[str], answer: list[Any] | None = None, **_: Any
                 ) -> list[float]:
    """1 when the completion's final answer equals the row's ``answer`` column."""
    if answer is None:
        raise LoradeckError("the exact_answer reward needs an 'answer' column in each row",
                            kind="data", where="grpo.rewards")
    return [1.0 if same_answer(c, a) else 0.0 for c, a in zip(completions, answer, strict=True)]


def json_valid(completions: list[str], **_: Any) -> list[float]:
    """1 when the completion is a JSON value."""
    out = []
    for c in completions:
        try:
            json.loads(c.strip())
            out.append(1.0)
        except ValueError:
            out.append(0.0)
    return out


def regex(pattern: str) -> Reward:
    compiled = re.compile(pattern, re.DOTALL)

    def reward(completions: list[str], **_: Any) -> list[float]:
        return [1.0 if compiled.search(c) else 0.0 for c in completions]
    return reward


def max_length(limit: int) -> Reward:
    def reward(completions: list[str], **_: Any) -> list[float]:
        """1 within ``limit`` characters, falling to 0 at twice as long."""
        return [1.0 if len(c) <= limit else max(0.0, 1.0 - (len(c) - limit) / limit)
                for c in completions]
    return reward


def contains(text: str) -> Reward:
    def reward(completions: list[str], **_: Any) -> list[float]:
        return [1.0 if text in c else 0.0 for c in completions]
    return reward


def is_file_reward(spec: str) -> bool:
    path, sep, _ = spec.rpartition(":")
    return bool(sep) and path.endswith(".py") and not spec.startswith(("regex:", "contains:"))


def check_file(spec: str) -> Path:
    """The file of a ``FILE.py:FUNCTION`` reward, checked without running it: it exists,
    parses, and defines the function."""
    path_text, _, name = spec.rpartition(":")
    path = Path(path_text).expanduser()
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except OSError as exc:
        raise LoradeckError(f"reward file {path}: {exc.strerror or exc}", kind="config",
                            where="grpo.rewards", hint="fix the path in grpo.rewards") from None
    except SyntaxError as exc:
        raise LoradeckError(f"reward file {path} line {exc.lineno}: {exc.msg}", kind="config",
                            where="grpo.rewards") from None
    if not any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body):
        raise LoradeckError(f"reward file {path} defines no function {name!r}", kind="config",
                            where="grpo.rewards",
                            hint="def NAME(completions, **columns) -> list[float]")
    return path


def check(config: Any, allowed: bool) -> list[str]:
    """Refuse a reward file unless ``allowed`` (--trust-remote-code or the app's
    confirmation); returns the lines announcing the code that will run."""
    if config.training.method != "grpo":
        return []
    files = [s for s in config.grpo.rewards if is_file_reward(s)]
    for spec in files:
        check_file(spec)
    if files and not allowed:
        raise LoradeckError(f"{', '.join(files)} would run your Python code in the training "
                            "job", kind="config", where="grpo.rewards",
                            hint="add --trust-remote-code to allow it")
    return [f"grpo.rewards: running your reward code: {spec}" for spec in files]


def _load_file(spec: str) -> Reward:
    path_text, _, name = spec.rpartition(":")
    path = check_file(spec)
    module_spec = importlib.util.spec_from_file_location(f"loradeck_reward_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return getattr(module, name)


class Scoreboard:
    """The last batch the rewards scored: its prompts, completions and each reward's scores
    (what the samples panel shows of a GRPO run at its eval steps)."""

    def __init__(self) -> None:
        self.prompts: list[Any] = []
        self.completions: list[str] = []
        self.scores: dict[str, list[float]] = {}

    def note(self, name: str, prompts: Any, completions: Any, scores: list[float]) -> None:
        if completions is not self.completions:  # a new batch
            self.prompts, self.completions, self.scores = list(prompts or []), completions, {}
        self.scores[name] = [float(x) if x is not None else 0.0 for x in scores]

    def samples(self, limit: int, questions: dict[str, str]) -> list[dict[str, Any]]:
        """One answer for each of the first ``limit`` prompts, with its rewards."""
        out, seen = [], set()
        for i, completion in enumerate(self.completions or []):
            prompt = self.prompts[i] if i < len(self.prompts) else ""
            if prompt in seen:
                continue
            seen.add(prompt)
            each = {name: round(v[i], 4) for name, v in self.scores.items() if i < len(v)}
            out.append({"prompt": questions.get(prompt, str(prompt)[-200:]),
                        "answer": str(completion), "reward": round(sum(each.values()), 4),
                        "rewards": each})
            if len(out) >= limit:
                break
        return out


def build(specs: list[str], board: Scoreboard | None = None) -> list[Reward]:
    """The reward functions of ``grpo.rewards``, each named as TRL will log it (and noting
    what it scored on ``board``)."""
    out: list[Reward] = []
    seen: dict[str, int] = {}
    for spec in specs:
        kind, _, arg = spec.partition(":")
        if spec == "exact_answer":
            fn, name = exact_answer, "exact_answer"
        elif spec == "json_valid":
            fn, name = json_valid, "json_valid"
        elif kind == "regex":
            fn, name = regex(arg), "regex"
        elif kind == "max_length":
            fn, name = max_length(int(arg)), "max_length"
        elif kind == "contains":
            fn, name = contains(arg), "contains"
        else:
            fn = _load_file(spec)
            name = spec.rpartition(":")[2]
        seen[name] = seen.get(name, 0) + 1
        named = _named(fn, name if seen[name] == 1 else f"{name}_{seen[name]}", board)
        out.append(named)
    return out


def _named(fn: Reward, name: str, board: Scoreboard | None = None) -> Reward:
    def reward(*args: Any, **kwargs: Any) -> list[float]:
        scores = fn(*args, **kwargs)
        if board is not None:
            board.note(name, kwargs.get("prompts"), kwargs.get("completions"), scores)
        return scores
    reward.__name__ = reward.__qualname__ = name
    return reward
