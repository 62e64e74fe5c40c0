"""Dataset preparation for a training run: load, render, measure, split.

Runs inside the training job. ``datasets`` is imported inside ``prepare`` only, so the CLI can call
``check_dataset`` (no tokenizer, no model) cheaply before anything heavy loads.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from loradeck.engine.data import files as dataset_files
from loradeck.engine.data import templates
from loradeck.engine.errors import LoradeckError

SAMPLE_CHARS = 600


@dataclass
class Prepared:
    """Train and eval sets, tokenized (columns input_ids and assistant_masks: 1 where a token
    carries the loss), and what the run reports."""

    train: Any                      # datasets.Dataset
    eval: Any | None                # datasets.Dataset, or None without an eval split
    stats: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, str]] = field(default_factory=list)  # answered at eval steps


def check_dataset(config: Any) -> dataset_files.Loaded:
    """Check the dataset of ``config`` before any model loads; raise the first problem.

    Returns the loaded rows (shape, mapping, row count, examples) when the data is usable.
    """
    loaded = dataset_files.load_section(config.dataset)
    check_lengths(loaded, config.training.max_length)
    return loaded


MAX_CHARS_PER_TOKEN = 32  # above what any tokenizer packs into one token of ordinary text


def example_chars(example: dict[str, Any]) -> int:
    """Characters of one normalized example's text (all its turns, or prompt and completion)."""
    if "messages" in example:
        return sum(len(m.get("content") or "") for m in example["messages"])
    return sum(len(example.get(k) or "") for k in ("prompt", "completion", "text"))


def check_lengths(loaded: dataset_files.Loaded, max_length: int) -> None:
    """Refuse, before any tokenizer runs, a row too long to ever fit in ``max_length`` tokens
    (plain text is never too long: it is cut into max_length blocks)."""
    if loaded.format == "text":
        return
    limit = max_length * MAX_CHARS_PER_TOKEN
    for example, where in zip(loaded.examples, loaded.wheres, strict=False):
        chars = example_chars(example)
        if chars > limit:
            raise LoradeckError(
                f"the row has {chars:,} characters: it can never fit in "
                f"training.max_length={max_length} tokens (at most ~{limit:,} characters)",
                kind="data", where=where,
                hint="shorten or split the row, or remove it")


def split_indices(n: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/eval row indices; no eval rows when there are too few rows."""
    n_eval = int(round(n * eval_fraction)) if eval_fraction > 0 else 0
    if eval_fraction > 0 and n_eval == 0 and n >= 10:
        n_eval = 1
    if n_eval < 1 or n - n_eval < 1:
        return list(range(n)), []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def prepare(config: Any, tokenizer: Any) -> Prepared:
    """Load and validate the dataset, render it with the template, count tokens and split."""
    from datasets import Dataset

    section, training = config.dataset, config.training
    loaded = dataset_files.load_section(section)
    check_lengths(loaded, training.max_length)
    renderer = templates.Renderer(tokenizer, section.template, section.system_prompt)
    plain = loaded.format == "text"

    rows: list[list[tuple[str, bool]]] = []
    for example, where in zip(loaded.examples, loaded.wheres, strict=True):
        try:
            rows.append(renderer.segments(example))
        except LoradeckError as exc:
            raise LoradeckError(exc.message, kind=exc.kind, where=where, hint=exc.hint) from None
    max_length = training.max_length
    tokenized = [tokenize(tokenizer, pieces) for pieces in rows]
    lengths = [len(ids) for ids, _ in tokenized]
    truncated = 0 if plain else sum(n > max_length for n in lengths)
    # no trained token within max_length: the row teaches nothing (TRL drops it)
    dropped = 0 if plain else sum(1 not in mask[:max_length] for _, mask in tokenized)
    if plain:  # continued pretraining: a long text is cut into max_length blocks
        blocks = [block for ids, mask in tokenized for block in cut(ids, mask, max_length)]
        cut_rows = sum(n > max_length for n in lengths)
    else:
        blocks, cut_rows = tokenized, 0
        if truncated == len(rows):
            shortest = min(lengths)
            raise LoradeckError(
                f"every row ({len(rows)}) is longer than training.max_length={max_length} tokens "
                f"(the shortest has {shortest})", kind="data", where=loaded.source,
                hint=f"raise it, e.g. --set training.max_length={_round_up(shortest)}")
        if dropped == len(rows):
            first_trained = min(mask.index(1) if 1 in mask else len(mask)
                                for _, mask in tokenized)
            raise LoradeckError(
                f"in every row the prompt alone fills training.max_length={max_length} tokens, "
                "so no response token is left to learn", kind="data", where=loaded.source,
                hint=f"raise training.max_length above {first_trained}")
    records = [{"input_ids": ids, "assistant_masks": mask} for ids, mask in blocks]

    train_idx, eval_idx = split_indices(len(records), section.eval_fraction, training.seed)
    train = Dataset.from_list([records[i] for i in train_idx])
    evaluation = Dataset.from_list([records[i] for i in eval_idx]) if eval_idx else None
    sample = "".join(piece for piece, _ in rows[0])
    stats = {
        "source": loaded.source,
        "total_rows": loaded.total_rows,
        "rows": len(rows),
        "blocks": len(records),
        "cut_rows": cut_rows,
        "train_rows": len(train_idx),
        "eval_rows": len(eval_idx),
        "format": loaded.format,
        "columns": dict(loaded.columns),
        "template": renderer.name,
        "max_length": max_length,
        "truncated_rows": truncated,
        "dropped_rows": dropped,
        "max_tokens": max(lengths),
        "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "sample": sample[:SAMPLE_CHARS],
    }
    chosen = [loaded.examples[i] for i in eval_idx] if not plain else []
    return Prepared(train=train, eval=evaluation, stats=stats,
                    samples=sample_prompts(config, renderer, chosen))


def sample_prompts(config: Any, renderer: Any, eval_examples: list[dict[str, Any]]
                   ) -> list[dict[str, str]]:
    """What the job answers at each eval step: ``eval.prompts``, else the first
    ``eval.sample_prompts`` eval rows; each with its prompt as rendered for generation, its
    text as a person reads it, and the row's own answer as the reference."""
    section = getattr(config, "eval", None)
    if section is None:
        return []
    if section.prompts:
        return [{"text": p, "prompt": renderer.prompt([{"role": "user", "content": p}]),
                 "reference": ""} for p in section.prompts]
    out = []
    for example in eval_examples[: section.sample_prompts]:
        prompt, completion = renderer.render(example)
        if "messages" in example:
            users = [m for m in example["messages"] if m.get("role") == "user"]
            text = _content_text(users[-1].get("content")) if users else prompt
        else:
            text = str(example.get("prompt", prompt))
        reference = completion
        eos = getattr(renderer, "eos", None) or ""
        if eos and reference.endswith(eos):
            reference = reference[: -len(eos)]
        out.append({"text": text.strip(), "prompt": prompt, "reference": reference.strip()})
    return out


def _content_text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(p.get("text") or p.get("value") or "") for p in content
                        if isinstance(p, dict))
    return str(content or "")


def tokenize(tokenizer: Any, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Token ids of the joined pieces (special tokens added, as TRL adds them) and a mask: 1
    for each token that starts inside a trained piece."""
    text = "".join(piece for piece, _ in pieces)
    spans, at = [], 0
    for piece, trained in pieces:
        if trained:
            spans.append((at, at + len(piece)))
        at += len(piece)
    enc = tokenizer(text, return_offsets_mapping=True)
    mask = [int(end > start and any(a <= start < b for a, b in spans))
            for start, end in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def cut(ids: list[int], mask: list[int], size: int) -> list[tuple[list[int], list[int]]]:
    """``ids`` (and ``mask``) in blocks of ``size`` tokens (one block when it fits)."""
    return [(ids[i:i + size], mask[i:i + size]) for i in range(0, max(len(ids), 1), size)]


def _round_up(n: int) -> int:
    """The next power of two at or above ``n`` (a friendly max_length suggestion)."""
    size = 8
    while size < n:
        size *= 2
    return size
