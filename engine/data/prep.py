"""Dataset preparation for a training run: read, render, tokenize, measure, split.

Runs inside the training job. The rows are read as a stream (engine/data/readers) and written,
normalized, into memory-mapped Arrow files with ``datasets`` (``Dataset.from_generator``), so a
file of any size is prepared in bounded memory. Rendering and tokenizing run through
``datasets.map(batched=True)``, in parallel processes on large sets, a chunk at a time: between
chunks the job reports progress and honours a stop request or SIGTERM. ``datasets`` is imported
inside ``prepare`` only, so the CLI can call ``check_dataset`` (no tokenizer, no model) cheaply
before anything heavy loads.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradeck.engine.data import files as dataset_files
from loradeck.engine.data import lengths as lengths_policy
from loradeck.engine.data import templates
from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs import paths

SAMPLE_CHARS = 600
CHECK_ROWS = 100_000  # rows checked before launch; the job checks the rest as it reads them
CHUNK_ROWS = 50_000  # rows tokenized between progress reports and stop checks
PARALLEL_FROM = 20_000  # below this many rows one process is quicker than a pool
READ_REPORT_ROWS = 100_000  # rows read between progress reports
WORK_PREFIX = "prep-"


class PrepStopped(Exception):
    """Preparation ended early on a stop request or SIGTERM."""


Say = Callable[..., Any]


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

    Returns the rows checked (shape, mapping, examples): all of them, or the first CHECK_ROWS of
    a larger set (the job checks the rest as it reads them)."""
    return dataset_files.load_section(config.dataset, limit=CHECK_ROWS)


TEMPLATE_CHECK_ROWS = 50  # rows with tool calls rendered before launch


def has_tool_calls(example: dict[str, Any]) -> bool:
    return any(m.get("tool_calls") for m in example.get("messages") or [])


def check_template(config: Any, loaded: dataset_files.Loaded, tokenizer: Any = None) -> None:
    """Before launch, render the first rows that carry tool calls with the model's tokenizer
    and ``dataset.template``: a template that drops them is refused naming the row. Rows
    without tool calls need no tokenizer, so none is loaded for them."""
    rows = [(e, w) for e, w in zip(loaded.examples, loaded.wheres, strict=False)
            if has_tool_calls(e)][:TEMPLATE_CHECK_ROWS]
    if not rows:
        return
    if tokenizer is None:
        from loradeck.engine.models import loading

        tokenizer = loading.load_tokenizer(config.model)
    renderer = templates.Renderer(tokenizer, config.dataset.template,
                                  config.dataset.system_prompt)
    for example, where in rows:
        try:
            renderer.segments(example)
        except LoradeckError as exc:
            raise LoradeckError(exc.message, kind=exc.kind, where=exc.where or where,
                                hint=exc.hint) from None


MAX_CHARS_PER_TOKEN = 32  # above what any tokenizer packs into one token of ordinary text


def split_indices(n: int, eval_fraction: float, seed: int, max_eval: int | None = None
                  ) -> tuple[list[int], list[int]]:
    """Deterministic train/eval row indices; no eval rows when there are too few rows; at most
    ``max_eval`` eval rows."""
    n_eval = int(round(n * eval_fraction)) if eval_fraction > 0 else 0
    if eval_fraction > 0 and n_eval == 0 and n >= 10:
        n_eval = 1
    if max_eval is not None:
        n_eval = min(n_eval, max_eval)
    if n_eval < 1 or n - n_eval < 1:
        return list(range(n)), []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def work_dir_for(run_dir: Path | None) -> Path:
    """Where the prepared Arrow files go: RUN/data for a run (made anew by each job), else a
    folder of this process under the cache (those of dead processes are removed)."""
    from loradeck.engine.runs import leftovers

    if run_dir is not None:
        work = Path(run_dir) / "data"
        shutil.rmtree(work, ignore_errors=True)
    else:
        parent = paths.cache_dir() / "prepared"
        leftovers.remove_stale(parent, WORK_PREFIX)
        work = parent / f"{WORK_PREFIX}{os.getpid()}" / uuid.uuid4().hex[:8]
    work.mkdir(parents=True, exist_ok=True)
    return work


def _unwrap(exc: BaseException) -> BaseException:
    """The error a person can act on inside datasets' generation error, if there is one."""
    seen = exc
    while seen is not None:
        if isinstance(seen, (LoradeckError, PrepStopped)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def _read(opened: dataset_files.Stream, work: Path, say: Say,
          should_stop: Callable[[], bool]):
    """The normalized rows written to Arrow as they are read (a JSON text per example)."""
    from datasets import Dataset, Features, Value

    def rows():
        for n, (example, where) in enumerate(opened.examples, start=1):
            yield {"example": json.dumps(example, ensure_ascii=False), "where": where}
            if n % READ_REPORT_ROWS == 0:
                share = f" ({100 * opened.read() / opened.size:.0f}% of the file)" \
                    if opened.size else ""
                say(f"preparing the data: read {n:,} rows{share}", prepared_rows=n,
                    stage="read")
                if should_stop():
                    raise PrepStopped

    try:
        return Dataset.from_generator(
            rows, features=Features({"example": Value("string"), "where": Value("string")}),
            cache_dir=str(work), fingerprint=uuid.uuid4().hex)
    except Exception as exc:
        raise _unwrap(exc) from None


def tokenize_batch(batch: dict[str, list], *, renderer: Any, max_length: int, plain: bool
                   ) -> dict[str, list]:
    """One ``datasets.map`` batch: render each example, tokenize the batch at once, mark the
    trained tokens; plain text is cut into max_length blocks (one output row each)."""

    texts, spans_all = [], []
    for raw, where in zip(batch["example"], batch["where"], strict=True):
        try:
            pieces = renderer.segments(json.loads(raw))
        except LoradeckError as exc:
            raise LoradeckError(exc.message, kind=exc.kind, where=where, hint=exc.hint) from None
        spans, at = [], 0
        for piece, trained in pieces:
            if trained:
                spans.append((at, at + len(piece)))
            at += len(piece)
        texts.append("".join(piece for piece, _ in pieces))
        spans_all.append(spans)
    enc = renderer.tokenizer(texts, return_offsets_mapping=True)
    out: dict[str, list] = {"input_ids": [], "assistant_masks": [], "length": [], "first": [],
                            "trained": [], "first_trained": []}
    for ids, offsets, spans in zip(enc["input_ids"], enc["offset_mapping"], spans_all,
                                   strict=True):
        mask = _mask(offsets, spans)
        first_trained = mask.index(1) if 1 in mask else len(mask)
        blocks = cut(list(ids), mask, max_length) if plain else [(list(ids), mask)]
        for k, (block_ids, block_mask) in enumerate(blocks):
            out["input_ids"].append(block_ids)
            out["assistant_masks"].append(block_mask)
            out["length"].append(len(ids))
            out["first"].append(k == 0)
            out["trained"].append(first_trained < max_length)
            out["first_trained"].append(first_trained)
    return out


def _mask(offsets: list, spans: list[tuple[int, int]]) -> list[int]:
    """1 for each token that starts inside a trained span (and covers some text)."""
    import numpy as np

    if not offsets:
        return []
    starts = np.fromiter((a for a, _ in offsets), dtype=np.int64, count=len(offsets))
    ends = np.fromiter((b for _, b in offsets), dtype=np.int64, count=len(offsets))
    if not spans:
        return [0] * len(offsets)
    lo = np.array([a for a, _ in spans], dtype=np.int64)
    hi = np.array([b for _, b in spans], dtype=np.int64)
    k = np.searchsorted(lo, starts, side="right") - 1
    inside = (k >= 0) & (starts < hi[np.clip(k, 0, None)]) & (ends > starts)
    return inside.astype(np.int8).tolist()


def _tokenize(normalized, renderer: Any, max_length: int, plain: bool, work: Path, say: Say,
              should_stop: Callable[[], bool]):
    """``tokenize_batch`` over every row, a chunk at a time (progress and stop in between),
    in parallel processes on large sets."""
    from datasets import concatenate_datasets

    n = len(normalized)
    procs = min(os.cpu_count() or 1, 8) if n >= PARALLEL_FROM else None
    procs = procs if procs and procs > 1 else None
    parts = []
    for i, start in enumerate(range(0, n, CHUNK_ROWS)):
        if should_stop():
            raise PrepStopped
        chunk = normalized.select(range(start, min(n, start + CHUNK_ROWS)))
        parts.append(chunk.map(
            tokenize_batch, batched=True, batch_size=500, num_proc=procs,
            remove_columns=["example", "where"],
            fn_kwargs={"renderer": renderer, "max_length": max_length, "plain": plain},
            cache_file_name=str(work / f"tokens-{i:05d}.arrow"),
            new_fingerprint=uuid.uuid4().hex, load_from_cache_file=False))
        if n > CHUNK_ROWS:
            done = min(n, start + CHUNK_ROWS)
            say(f"preparing the data: tokenized {done:,} of {n:,} rows", prepared_rows=done,
                total_rows=n, stage="tokenize")
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def prepare(config: Any, tokenizer: Any, *, run_dir: Path | None = None,
            progress: Say | None = None, should_stop: Callable[[], bool] | None = None
            ) -> Prepared:
    """Read and validate the dataset, render it with the template, tokenize, count tokens
    and split. ``progress(text, **fields)`` gets a line now and then on a large set;
    ``should_stop()`` true between chunks raises PrepStopped. Arrow files go to RUN/data
    when ``run_dir`` is given (see ``work_dir_for``)."""
    import numpy as np
    from datasets.utils import logging as datasets_logging

    datasets_logging.disable_progress_bar()  # progress comes as loradeck's own lines
    say = progress or (lambda _text, **_fields: None)
    stop = should_stop or (lambda: False)
    section, training = config.dataset, config.training
    max_length = training.max_length
    opened = dataset_files.stream_section(section)
    plain = opened.format == "text"
    renderer = templates.Renderer(tokenizer, section.template, section.system_prompt)
    work = work_dir_for(run_dir)
    normalized = _read(opened, work, say, stop)
    if len(normalized) == 0:
        raise LoradeckError("no rows in the file", kind="data", where=opened.source)
    tokenized = _tokenize(normalized, renderer, max_length, plain, work, say, stop)

    columns = tokenized.with_format("numpy", columns=["length", "first", "first_trained"])[:]
    first = columns["first"].astype(bool)
    lengths = columns["length"][first]
    rows = int(first.sum())
    records = tokenized.select_columns(["input_ids", "assistant_masks"])
    counts, kept = lengths_policy.count(lengths, columns["first_trained"][first], max_length,
                                        lambda i: normalized[i]["where"], plain)
    lengths_policy.refuse_when_empty(counts, int(columns["first_trained"].min()), opened.source)
    if counts.dropped:  # one block a row here: the kept rows are the kept records
        records = records.select(kept)

    eval_cap = getattr(getattr(config, "eval", None), "max_rows", None)
    train_idx, eval_idx = split_indices(len(records), section.eval_fraction, training.seed,
                                        eval_cap)
    train = records.select(train_idx)
    evaluation = records.select(eval_idx) if eval_idx else None
    first_example = json.loads(normalized[kept[0]]["example"])
    sample = "".join(piece for piece, _ in renderer.segments(first_example))
    stats = {
        "source": opened.source,
        "total_rows": opened.total_rows,
        "rows": rows,
        "blocks": len(records),
        "cut_rows": counts.cut if plain else 0,
        "train_rows": len(train_idx),
        "eval_rows": len(eval_idx),
        "format": opened.format,
        "columns": dict(opened.columns),
        "template": renderer.name,
        "max_length": max_length,
        **counts.fields(),
        "lengths_line": counts.line(),
        "max_tokens": int(lengths.max()),
        "mean_tokens": round(float(np.mean(lengths)), 1),
        "sample": sample[:SAMPLE_CHARS],
    }
    if run_dir is not None and not plain and eval_idx:  # what `loradeck eval` answers
        from loradeck.engine.evals.rows import save_held_out

        held = normalized.select([kept[i] for i in eval_idx])
        save_held_out(run_dir, [(json.loads(e), w) for e, w in
                                zip(held["example"], held["where"], strict=True)])
    n_samples = getattr(getattr(config, "eval", None), "sample_prompts", 0)
    chosen = [json.loads(e) for e in
              normalized.select([kept[i] for i in eval_idx[:n_samples]])["example"]] \
        if not plain and eval_idx and n_samples else []
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


def cut(ids: list[int], mask: list[int], size: int) -> list[tuple[list[int], list[int]]]:
    """``ids`` (and ``mask``) in blocks of ``size`` tokens (one block when it fits)."""
    return [(ids[i:i + size], mask[i:i + size]) for i in range(0, max(len(ids), 1), size)]
