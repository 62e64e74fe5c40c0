"""A GGUF file checked in llama.cpp next to the merged model in transformers: token ids, greedy
tokens on a few prompts, and the mean loss on eval rows."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from loradeck.engine.patches import llama_cpp_amx
from loradeck.engine.publish.gguf_vocab import PROBE

CHECK_TEXTS = ("What is LoRA fine-tuning?", "한국의 수도는 어디인가요?",
               "Write one sentence about the sea.", PROBE)
CHECK_NEW_TOKENS = 16
EXACT = ("f16", "bf16")  # greedy tokens must match the merged model's


def _llama(path: Path) -> Any:
    return llama_cpp_amx.open_model(path, n_ctx=1024, logits_all=True, verbose=False,
                                    n_threads=max(1, os.cpu_count() or 1), seed=0)


def _greedy_llama(llm: Any, ids: list[int], n: int) -> list[int]:
    out: list[int] = []
    llm.reset()
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0,
                              reset=True):
        if token == llm.token_eos() or len(out) >= n:
            break
        out.append(int(token))
        if len(out) >= n:
            break
    return out


def _mean_loss_llama(llm: Any, rows: list[tuple[list[int], list[int]]]) -> float | None:
    """The mean loss over the trained tokens of ``rows``, in an open llama.cpp model."""
    total, count = 0.0, 0
    for ids, mask in rows:
        s, n = _loss_llama(llm, ids, mask)
        total, count = total + s, count + n
    return round(total / count, 5) if count else None


def _loss_llama(llm: Any, ids: list[int], mask: list[int]) -> tuple[float, int]:
    import numpy as np

    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    total, count = 0.0, 0
    for pos in range(1, len(ids)):
        if not mask[pos]:
            continue
        row = logits[pos - 1]
        top = row.max()
        total += float(top + math.log(np.exp(row - top).sum()) - row[ids[pos]])
        count += 1
    return total, count


def check_file(path: Path, quant: str, reference: dict[str, Any], tokenizer: Any,
               sp_model: Path | None = None) -> dict[str, Any]:
    """The file in llama.cpp next to the merged model's ``reference`` results. Its token ids
    are checked against the tokenizer's own: transformers' for BPE, and for a SentencePiece
    vocabulary the SentencePiece model itself (transformers' agreement is recorded beside)."""
    hf_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in CHECK_TEXTS]
    own_ids = hf_ids
    if sp_model is not None:
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=str(sp_model))
        own_ids = [processor.encode(t) for t in CHECK_TEXTS]
    llm = _llama(path)
    try:
        got = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)
               for t in CHECK_TEXTS]
        token_texts = [a == b for a, b in zip(got, own_ids, strict=True)]
        greedy = [_greedy_llama(llm, ids, CHECK_NEW_TOKENS) for ids in reference["prompts"]]
        agree = [a == b for a, b in zip(greedy, reference["greedy"], strict=True)]
        same_tokens = sum(sum(x == y for x, y in zip(a, b, strict=False))
                          for a, b in zip(greedy, reference["greedy"], strict=True))
        total = sum(len(b) for b in reference["greedy"]) or 1
        eval_loss = _mean_loss_llama(llm, reference["eval_rows"])
    finally:
        llm.close()
    extra = {} if sp_model is None else {"tokenizer_ids_match_transformers": all(
        a == b for a, b in zip(got, hf_ids, strict=True))}
    return {"file": path.name, "type": quant, "bytes": path.stat().st_size,
            "tokenizer_ids_match": all(token_texts), **extra, "greedy_match": all(agree),
            "greedy_prompts_matching": sum(agree), "greedy_token_agreement":
                round(same_tokens / total, 4), "eval_loss": eval_loss,
            "eval_loss_merged": reference["eval_loss"],
            "eval_loss_gap": None if eval_loss is None or reference["eval_loss"] is None
            else round(eval_loss - reference["eval_loss"], 5)}


def reference_results(model_dir: Path, eval_rows: list[tuple[list[int], list[int]]],
                      template: str) -> dict[str, Any]:
    """The merged model's greedy tokens on the check prompts and its eval loss (transformers,
    fp32 on the CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loradeck.engine.data import templates

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    renderer = templates.Renderer(tokenizer, template)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    prompts, greedy = [], []
    eos = {tokenizer.eos_token_id} | templates.end_of_turn_ids(tokenizer, template)
    with torch.inference_mode():
        for text in CHECK_TEXTS[:3]:
            ids = tokenizer(renderer.prompt([{"role": "user", "content": text}]))["input_ids"]
            seq = model.generate(input_ids=torch.tensor([ids]), do_sample=False,
                                 max_new_tokens=CHECK_NEW_TOKENS, repetition_penalty=1.0,
                                 eos_token_id=sorted(eos), pad_token_id=tokenizer.pad_token_id,
                                 temperature=None, top_p=None, top_k=None)
            new = [int(t) for t in seq[0, len(ids):] if int(t) not in eos]
            prompts.append(ids)
            greedy.append(new)
    return {"prompts": prompts, "greedy": greedy, "eval_rows": eval_rows,
            "eval_loss": masked_loss(model, eval_rows)}


def masked_loss(model: Any, rows: list[tuple[list[int], list[int]]]) -> float | None:
    """Mean loss of a transformers model over the trained (mask 1) tokens of ``rows``."""
    import torch

    loss_sum, loss_n = 0.0, 0
    with torch.inference_mode():
        for ids, mask in rows:
            logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0]
            logp = torch.log_softmax(logits[:-1].double().cpu(), dim=-1)
            for pos in range(1, len(ids)):
                if mask[pos]:
                    loss_sum -= float(logp[pos - 1, ids[pos]])
                    loss_n += 1
    return round(loss_sum / loss_n, 5) if loss_n else None


def llama_loss(path: Path, rows: list[tuple[list[int], list[int]]]) -> float | None:
    """The same loss, of a GGUF file in llama.cpp."""
    llm = _llama(path)
    try:
        return _mean_loss_llama(llm, rows)
    finally:
        llm.close()
