"""Scores of a model's answers against the references, from the libraries made for them:
chrF and BLEU (sacrebleu), ROUGE-L (rouge-score, with a tokenizer that keeps Hangul, kana,
Han and every other script), exact match, answer length, the end-of-turn rate and the
JSON-valid rate.

sacrebleu and rouge-score come with ``loradeck[eval]``; they are imported when scoring.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loradeck.engine.enums import EvalMetric
from loradeck.engine.errors import LoradeckError

# One token per Han, kana or Thai character (scripts written without spaces); a run of
# letters or digits of any other script (Hangul words included) is one token.
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0e7f]"
                    r"|[^\W_]+", re.UNICODE)
_SPACE = re.compile(r"\s+")


class WordTokenizer:
    """rouge-score's tokenizer for any script: its default keeps only a-z and 0-9, so an
    answer in Korean scores 0 whatever it says."""

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text.lower())


def normalize(text: str) -> str:
    """Case and runs of space folded, for exact match."""
    return _SPACE.sub(" ", text).strip().casefold()


@dataclass
class Answer:
    """One model's answer to one row: its text, new tokens, and whether it stopped at the
    template's end of turn within the limit."""

    text: str
    tokens: int
    stopped: bool


def _needs(module: str) -> LoradeckError:
    return LoradeckError(f"scoring needs {module}", kind="config",
                         hint="pip install 'loradeck[eval]'")


def chrf(answers: Sequence[str], references: Sequence[str]) -> float:
    try:
        import sacrebleu
    except ImportError:
        raise _needs("sacrebleu") from None
    return round(float(sacrebleu.corpus_chrf(list(answers), [list(references)]).score), 2)


def bleu(answers: Sequence[str], references: Sequence[str]) -> float:
    try:
        import sacrebleu
    except ImportError:
        raise _needs("sacrebleu") from None
    return round(float(sacrebleu.corpus_bleu(list(answers), [list(references)]).score), 2)


def rouge_l(answers: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (0 to 1) over the rows."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise _needs("rouge-score") from None
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=WordTokenizer())
    scores = [scorer.score(ref, ans)["rougeL"].fmeasure for ans, ref in
              zip(answers, references, strict=True)]
    return round(sum(scores) / len(scores), 4) if scores else 0.0


def exact(answers: Sequence[str], references: Sequence[str]) -> float:
    """Share of answers equal to their reference, case and space folded."""
    pairs = list(zip(answers, references, strict=True))
    return round(sum(normalize(a) == normalize(r) for a, r in pairs) / len(pairs), 4) \
        if pairs else 0.0


def _json_value(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, (dict, list)) else None


def references_are_json(references: Sequence[str]) -> bool:
    """Every reference is a JSON object or array (then the JSON-valid rate is reported)."""
    return bool(references) and all(_json_value(r.strip()) is not None for r in references)


def json_valid(answers: Sequence[str]) -> float:
    return round(sum(_json_value(a.strip()) is not None for a in answers) / len(answers), 4) \
        if answers else 0.0


def score(answers: Sequence[Answer], references: Sequence[str | None],
          loss: float | None = None) -> dict[str, float | None]:
    """Every score of one model on the rows. The reference-based scores (chrF, BLEU,
    ROUGE-L, exact) count the rows that have a reference; None when none has."""
    texts = [a.text for a in answers]
    pairs = [(a.text, r) for a, r in zip(answers, references, strict=True) if r]
    out: dict[str, float | None] = dict.fromkeys(
        (EvalMetric.CHRF, EvalMetric.BLEU, EvalMetric.ROUGE_L, EvalMetric.EXACT))
    if pairs:
        hyp, ref = [p[0] for p in pairs], [p[1] for p in pairs]
        out |= {EvalMetric.CHRF: chrf(hyp, ref), EvalMetric.BLEU: bleu(hyp, ref),
                EvalMetric.ROUGE_L: rouge_l(hyp, ref), EvalMetric.EXACT: exact(hyp, ref)}
    out[EvalMetric.LOSS] = None if loss is None else round(loss, 4)
    out["answer_tokens"] = round(sum(a.tokens for a in answers) / len(answers), 1) \
        if answers else None
    out["end_of_turn"] = round(sum(a.stopped for a in answers) / len(answers), 4) \
        if answers else None
    refs = [r for r in references if r]
    if refs and len(refs) == len(references) and references_are_json(refs):
        out["json_valid"] = json_valid(texts)
    return {str(k): v for k, v in out.items()}


def higher_is_better(metric: str) -> bool:
    """Loss and answer length are not 'more is better'; the rest are."""
    return metric not in (EvalMetric.LOSS, "answer_tokens")
