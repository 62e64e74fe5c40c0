"""A GGUF file as the chat worker's model: llama.cpp through llama-cpp-python, no torch.

The prompt is rendered with the chat template inside the file (llama-cpp-python's Jinja2 chat
formatter, from the file's ``tokenizer.chat_template``), tokenized by llama.cpp, and the reply
is streamed token by token until the template's end of turn, the file's eos, a cancel or
max_new_tokens. It speaks the same protocol as the transformers model (``loaded`` info,
``token`` and ``done`` replies).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from loradeck.engine.enums import FinishReason
from loradeck.engine.errors import LoradeckError
from loradeck.engine.patches import llama_cpp_amx
from loradeck.engine.serve.replies import Finished, Token


class LlamaCppModel:
    """One GGUF file loaded in llama.cpp."""

    has_adapter = False

    def __init__(self, request: dict[str, Any]) -> None:
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError:
            raise LoradeckError("chatting with a GGUF file needs llama-cpp-python",
                                kind="config", hint="pip install 'loradeck[gguf]'") from None
        from loradeck.engine.models.from_gguf import existing

        path = existing(str(request["model"]))
        started = time.perf_counter()
        self.llm = llama_cpp_amx.open_model(path, n_ctx=int(request.get("n_ctx") or 4096),
                                            n_threads=max(1, os.cpu_count() or 1),
                                            verbose=False)
        meta = self.llm.metadata
        template = meta.get("tokenizer.chat_template")
        bos = self._piece(self.llm.token_bos())
        eos = self._piece(self.llm.token_eos())
        if not template:
            raise LoradeckError("the GGUF file has no chat template", kind="model",
                                where=str(path), hint="export it again with loradeck export")
        self.formatter = Jinja2ChatFormatter(template, eos, bos)
        self.closing = Jinja2ChatFormatter(template, eos, bos, add_generation_prompt=False)
        self.stop_ids = sorted({self.llm.token_eos()} | self._end_of_turn())
        self.param_defaults: dict[str, Any] = {}
        self.info = {"name": str(path), "adapter": False, "adapter_path": None,
                     "quantization": meta.get("general.file_type", "gguf"), "device": "cpu",
                     "dtype": "gguf", "backend": "llama.cpp",
                     "parameters": int(llama_cpp.llama_model_n_params(self.llm.model)),
                     "footprint_gb": round(path.stat().st_size / 1e9, 4),
                     "chat_template": True, "generation_defaults": {},
                     "stop_tokens": [self._piece(i) for i in self.stop_ids],
                     "load_s": round(time.perf_counter() - started, 3)}

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", "replace")

    def _end_of_turn(self) -> set[int]:
        """The control tokens the template writes right after an assistant's reply."""
        from loradeck.engine.data import templates

        after = templates.after_reply(self.closing(messages=templates.PROBE_TURNS).prompt)
        ids = self.llm.tokenize(after.encode("utf-8"), add_bos=False, special=True)[:3]
        return {i for i in ids if not self.llm.detokenize([i], special=False)}

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        return self.formatter(messages=messages).prompt

    def generate(self, job: Any, replies: Any) -> None:
        """Stream one reply, then send ``done``."""
        from loradeck.engine.data.prep import MAX_CHARS_PER_TOKEN
        from loradeck.engine.serve.worker import fit_context

        p = job.params
        prompt = self.prompt_text(job.messages)
        context = self.llm.n_ctx()
        if len(prompt) > context * MAX_CHARS_PER_TOKEN:  # too long to tokenize first
            fit_context(context, context, 0)
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        max_new = fit_context(len(tokens), context, p["max_new_tokens"])
        started = time.perf_counter()
        first_at: float | None = None
        new: list[int] = []
        pending = b""
        reason = FinishReason.LENGTH
        stops = set(self.stop_ids)
        sampling = dict(temp=0.0, top_k=1, top_p=1.0, min_p=0.0) if p["temperature"] == 0 \
            else dict(temp=p["temperature"], top_k=p["top_k"], top_p=p["top_p"], min_p=0.0)
        if p.get("seed") is not None:
            self.llm.set_seed(int(p["seed"]))
        for token in self.llm.generate(tokens, repeat_penalty=p["repetition_penalty"],
                                       reset=True, **sampling):
            if job.cancel.is_set():
                reason = FinishReason.CANCELLED
                break
            if token in stops:
                reason = FinishReason.STOP
                break
            new.append(int(token))
            if first_at is None:
                first_at = time.perf_counter()
            pending += self.llm.detokenize([token], prev_tokens=tokens + new[:-1])
            text, pending = _complete_utf8(pending)
            if text:
                replies.send(Token(job.id, text))
            if len(new) >= max_new:
                break
        if pending:
            replies.send(Token(job.id, pending.decode("utf-8", "replace")))
        elapsed = time.perf_counter() - started
        ttft = (first_at - started) if first_at else None
        decode_s = elapsed - (ttft or 0.0)
        tps = (len(new) - 1) / decode_s if len(new) > 1 and decode_s > 0 else 0.0
        text = self.llm.detokenize(new, prev_tokens=tokens).decode("utf-8", "replace")
        replies.send(Finished(job.id, text=text, tokens=len(new),
                          ttft_s=None if ttft is None else round(ttft, 4),
                          tokens_per_second=round(tps, 2), finish_reason=reason,
                          prompt_tokens=len(tokens), elapsed_s=round(elapsed, 4), params=p,
                          torch_imported="torch" in sys.modules))


def _complete_utf8(data: bytes) -> tuple[str, bytes]:
    """The longest whole UTF-8 prefix of ``data`` as text, and the rest (a character split
    across tokens waits for its next bytes)."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8"), data[cut:]
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", "replace"), b""
