"""The rows of DPO, ORPO, KTO and GRPO as TRL takes them: each prompt rendered with the
run's template (as SFT renders it, so chat and export see the same turns), each answer as the
template ends an assistant turn; split into train and eval like SFT's rows, the held-out ones
kept for ``loradeck eval`` as SFT's are. The job calls it; the rows were checked before launch
(``engine.data.method_rows``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loradeck.engine.data import method_rows, templates
from loradeck.engine.data.prep import Prepared, split_indices
from loradeck.engine.errors import LoradeckError


def _answer(renderer: templates.Renderer, prompt: list[dict[str, str]], text: str
            ) -> tuple[str, str]:
    """(the prompt as rendered for generation, the answer as the template ends the turn)."""
    return renderer.render({"messages": [*prompt, {"role": "assistant", "content": text}]})


def render(row: dict[str, Any], shape: str, renderer: templates.Renderer, where: str
           ) -> dict[str, Any]:
    try:
        if shape == "pairs":
            prompt, chosen = _answer(renderer, row["prompt"], row["chosen"])
            _, rejected = _answer(renderer, row["prompt"], row["rejected"])
            return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if shape == "unpaired":
            prompt, completion = _answer(renderer, row["prompt"], row["completion"])
            return {"prompt": prompt, "completion": completion, "label": row["label"]}
        return {**row, "prompt": renderer.prompt(row["prompt"])}
    except LoradeckError as exc:
        raise LoradeckError(exc.message, kind=exc.kind, where=exc.where or where,
                            hint=exc.hint) from None


def held_out_example(row: dict[str, Any]) -> dict[str, Any]:
    """A held-out row as ``loradeck eval`` answers it: its prompt, with the chosen answer (or
    a KTO answer labelled good) as the reference; a bad answer is no reference."""
    answer = row["chosen"] if "chosen" in row else (row["completion"] if row.get("label")
                                                    else None)
    reply = [{"role": "assistant", "content": answer}] if answer else []
    return {"messages": [*row["prompt"], *reply]}


def prepare(config: Any, tokenizer: Any, *, run_dir: Path | None = None,
            say: Any = None) -> Prepared:
    """Read, check, render and split the method's rows (``Prepared`` as SFT's, untokenized:
    TRL's trainers tokenize prompt and answers themselves)."""
    from datasets import Dataset

    section, training = config.dataset, config.training
    read = method_rows.read(section, training.method)
    if not read.rows:
        raise LoradeckError("no rows in the file", kind="data", where=read.source)
    renderer = templates.Renderer(tokenizer, section.template, section.system_prompt)
    rendered = [render(r, read.shape, renderer, w)
                for r, w in zip(read.rows, read.wheres, strict=True)]
    has_eval = training.method != "grpo"  # GRPO's eval would sample every prompt again
    eval_cap = config.eval.max_rows
    train_idx, eval_idx = split_indices(len(rendered), section.eval_fraction if has_eval
                                        else 0.0, training.seed, eval_cap)
    train = Dataset.from_list([rendered[i] for i in train_idx])
    evaluation = Dataset.from_list([rendered[i] for i in eval_idx]) if eval_idx else None
    first = rendered[train_idx[0]]
    sample = first["prompt"] + str(first.get("chosen", first.get("completion", "")))
    stats = {"source": read.source, "total_rows": read.total_rows, "rows": len(rendered),
             "train_rows": len(train_idx), "eval_rows": len(eval_idx), "format": read.shape,
             "columns": {c: c for c in read.columns}, "template": renderer.name,
             "max_length": training.max_length, "sample": sample[:600]}
    questions = [{"prompt": r["prompt"], "text": q["prompt"][-1]["content"]}
                 for r, q in zip(rendered, read.rows, strict=True)] \
        if read.shape == "prompts" else []  # GRPO's samples name the question, not its render
    if run_dir is not None and eval_idx:  # what `loradeck eval` answers
        from loradeck.engine.evals.rows import save_held_out

        save_held_out(run_dir, [(held_out_example(read.rows[i]), read.wheres[i])
                                for i in eval_idx])
    if say is not None:
        say(f"{training.method} rows: {len(train_idx)} to train on, {len(eval_idx)} held out "
            f"({read.shape}, {renderer.name} template)")
    return Prepared(train=train, eval=evaluation, stats=stats, samples=questions)


def token_rows(config: Any, tokenizer: Any, limit: int, max_tokens: int = 512
               ) -> list[tuple[list[int], list[int]]]:
    """Up to ``limit`` rows as (token ids, mask of the tokens scored), held-out rows first:
    what the GGUF checks score both models on. A row's answer (the chosen one, or KTO's) is
    scored after its prompt; a prompt-only row (GRPO) is scored on its prompt."""
    prepared = prepare(config, tokenizer)
    rows = prepared.eval if prepared.eval is not None else prepared.train
    out = []
    for row in rows.select(range(min(limit, len(rows)))):
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        answer = row.get("chosen") or row.get("completion")
        if answer:
            scored = tokenizer(answer, add_special_tokens=False)["input_ids"]
            ids, mask = prompt + scored, [0] * len(prompt) + [1] * len(scored)
        else:
            ids, mask = prompt, [0] + [1] * (len(prompt) - 1)
        out.append((ids[:max_tokens], mask[:max_tokens]))
    return out
