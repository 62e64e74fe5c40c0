"""Greedy answers to the eval rows, from every model being compared, with one shared
``max_new_tokens``: the base, the run's adapter and its checkpoints through transformers and
PEFT (one base in memory, the adapters loaded beside each other, batched with left padding),
and an exported GGUF file through llama.cpp. Every model gets the same prompt text, rendered
with the run's template as training rendered it.

Heavy libraries are imported inside the functions that use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradeck.engine.evals.rows import EvalRow
from loradeck.engine.evals.scores import Answer

Progress = Callable[[int], None]  # rows answered so far by the current model


@dataclass(frozen=True)
class Contender:
    """One model being compared: ``base``, ``adapter``, ``checkpoint-N`` or ``gguf:Q``."""

    name: str
    adapter: Path | None = None
    gguf: Path | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf is not None


def cut_at_stop(new: Sequence[int], stops: set[int]) -> tuple[list[int], bool]:
    """The answer's tokens up to the first stop token, and whether there was one."""
    for i, token in enumerate(new):
        if token in stops:
            return list(new[:i]), True
    return list(new), False


class TransformersModels:
    """The run's base model once, with the adapters to compare loaded beside each other
    (PEFT named adapters); ``use`` picks one, ``base`` answers with the adapters off."""

    def __init__(self, run: Any, *, device: str = "auto", say: Callable[[str], None]) -> None:
        from loradeck.engine.data import templates
        from loradeck.engine.models.loading import load_model, pick_device
        from loradeck.engine.publish.merge import _load_tokenizer

        self.config = config = run.config()
        self.device = pick_device(device)
        from loradeck.engine.models import quantization

        quant, _ = quantization.choose(config.model.quantization, self.device)
        section = config.model.model_copy(update={"quantization": quant})
        self.qalora = config.lora.variant == "qalora"
        self.run = run
        say(f"loading {section.name} ({section.quantization}) on {self.device}")
        self._load = lambda: load_model(section, device=self.device)
        self.base = self._load()
        self.tokenizer = _load_tokenizer(run, section)
        if len(self.tokenizer) > self.base.get_input_embeddings().weight.shape[0]:
            self.base.resize_token_embeddings(len(self.tokenizer))
        templates.install(self.tokenizer, config.dataset.template)
        self.renderer = templates.Renderer(self.tokenizer, config.dataset.template,
                                           config.dataset.system_prompt)
        self.stop_ids = {self.tokenizer.eos_token_id} \
            | templates.end_of_turn_ids(self.tokenizer, config.dataset.template)
        self.model: Any = self.base
        self.loaded: set[str] = set()
        self.max_length = config.training.max_length

    def use(self, contender: Contender) -> None:
        """Make ``contender`` the model that answers."""
        if contender.adapter is None:
            return
        if self.qalora:  # its base runs on the run's INT4 codes: a fresh base each time
            from loradeck.engine.quant import qalora

            self.model = qalora.load_adapter(self._load(), contender.adapter)
            self.model.eval()
            return
        from peft import PeftModel

        if self.model is self.base:
            self.model = PeftModel.from_pretrained(self.base, contender.adapter,
                                                   adapter_name=contender.name)
        elif contender.name not in self.loaded:
            self.model.load_adapter(contender.adapter, adapter_name=contender.name)
        self.loaded.add(contender.name)
        self.model.set_adapter(contender.name)
        self.model.eval()

    @contextmanager
    def answering(self, contender: Contender) -> Iterator[Any]:
        """The model to run for ``contender`` (the base: the adapters disabled)."""
        self.use(contender)
        off = self.model.disable_adapter() if contender.adapter is None \
            and self.model is not self.base else nullcontext()
        with off:
            yield self.model

    def answer(self, contender: Contender, rows: Sequence[EvalRow], max_new_tokens: int,
               batch_size: int, progress: Progress | None = None) -> list[Answer]:
        """Greedy answers, ``batch_size`` prompts at a time (left padded, similar lengths
        together), in the rows' order."""
        import torch

        from loradeck.engine.train.callbacks import decode_whole

        tok = self.tokenizer
        prompts = [row.prompt_text(self.renderer) for row in rows]
        encoded = [tok(p)["input_ids"] for p in prompts]  # special tokens added, as trained
        order = sorted(range(len(rows)), key=lambda i: len(encoded[i]))
        out: list[Answer | None] = [None] * len(rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        stops = sorted(self.stop_ids)
        with self.answering(contender) as model, torch.inference_mode():
            for start in range(0, len(order), max(1, batch_size)):
                chunk = order[start:start + batch_size]
                width = max(len(encoded[i]) for i in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for j, i in enumerate(chunk):
                    n = len(encoded[i])
                    ids[j, width - n:] = torch.tensor(encoded[i])
                    mask[j, width - n:] = 1
                seq = model.generate(input_ids=ids.to(model.device),
                                     attention_mask=mask.to(model.device), do_sample=False,
                                     num_beams=1, max_new_tokens=max_new_tokens,
                                     eos_token_id=stops, pad_token_id=pad, use_cache=True,
                                     temperature=None, top_p=None, top_k=None)
                for j, i in enumerate(chunk):
                    new, stopped = cut_at_stop(seq[j, width:].tolist(), self.stop_ids)
                    out[i] = Answer(decode_whole(tok, new).strip(), len(new), stopped)
                if progress:
                    progress(min(start + batch_size, len(order)))
        return [a for a in out if a is not None]

    def reference_loss(self, contender: Contender, rows: Sequence[EvalRow],
                       batch_size: int) -> float | None:
        """The mean loss per reference token under the model (the completion rendered as
        training rendered it, after the prompt); None when no row has a reference."""
        import torch

        tok = self.tokenizer
        pairs = []
        for row in rows:
            completion = row.completion_text(self.renderer)
            if completion:
                prompt = tok(row.prompt_text(self.renderer))["input_ids"]
                answer = tok(completion, add_special_tokens=False)["input_ids"]
                ids = (prompt + answer)[: self.max_length]
                pairs.append((ids, len(prompt)))
        pairs = [(ids, n) for ids, n in pairs if len(ids) > n]
        if not pairs:
            return None
        total, count = 0.0, 0
        with self.answering(contender) as model, torch.inference_mode():
            for start in range(0, len(pairs), max(1, batch_size)):
                chunk = pairs[start:start + batch_size]
                width = max(len(ids) for ids, _ in chunk)
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                labels = torch.full((len(chunk), width), -100, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for j, (row_ids, n) in enumerate(chunk):
                    ids[j, :len(row_ids)] = torch.tensor(row_ids)
                    labels[j, n:len(row_ids)] = torch.tensor(row_ids[n:])
                    mask[j, :len(row_ids)] = 1
                logits = model(input_ids=ids.to(model.device),
                               attention_mask=mask.to(model.device)).logits.float().cpu()
                losses = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                    ignore_index=-100, reduction="sum")
                total += float(losses)
                count += int((labels[:, 1:] != -100).sum())
        return total / count if count else None

    def close(self) -> None:
        from loradeck.engine.models.loading import free_memory

        self.model = self.base = None
        free_memory()


class GgufModel:
    """An exported GGUF file in llama.cpp, answering greedily (no torch)."""

    def __init__(self, path: Path, n_ctx: int = 4096) -> None:
        from loradeck.engine.serve.llama_cpp_model import LlamaCppModel

        self.inner = LlamaCppModel({"model": str(path), "n_ctx": n_ctx})
        self.llm = self.inner.llm
        self.stops = set(self.inner.stop_ids)

    def answer(self, prompts: Sequence[str], max_new_tokens: int,
               progress: Progress | None = None) -> list[Answer]:
        out = []
        for n, prompt in enumerate(prompts, start=1):
            tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
            new: list[int] = []
            stopped = False
            for token in self.llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0,
                                           repeat_penalty=1.0, reset=True):
                if token in self.stops:
                    stopped = True
                    break
                new.append(int(token))
                if len(new) >= max_new_tokens:
                    break
            text = self.llm.detokenize(new, prev_tokens=tokens).decode("utf-8", "replace")
            out.append(Answer(text.replace("\ufffd", "").strip(), len(new), stopped))
            if progress:
                progress(n)
        return out

    def close(self) -> None:
        self.llm.close()
