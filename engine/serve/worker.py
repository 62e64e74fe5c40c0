"""The chat worker: loads a model once and serves chat requests as JSON lines on stdin/stdout.

Run as ``python -m loradeck.engine.serve.worker``. Requests (one JSON object a line, key ``type``):

- ``load``: model, adapter (path or null), quantization (none | 8bit | 4bit); optional
  revision, trust_remote_code, device (auto | cpu | cuda), id.
- ``generate``: id, messages ([{role, content}], system prompt and earlier turns included),
  params (temperature, top_p, top_k, max_new_tokens, repetition_penalty, seed), adapter
  (true/false; false runs the base model through PEFT's disable_adapter, no reload).
- ``cancel``: id. ``shutdown``.

Replies: the dataclasses of ``loradeck.engine.serve.replies``, one JSON line each (``type``
loaded, token, done or error).

Generate requests run one at a time on a worker thread while the main thread keeps reading
stdin, so ``cancel`` stops a reply mid-stream. The worker exits when stdin closes. Only replies
go to stdout; everything else anything prints goes to stderr.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from loradeck.engine.data import templates
from loradeck.engine.data.prep import MAX_CHARS_PER_TOKEN
from loradeck.engine.enums import FinishReason, Quantization, values
from loradeck.engine.errors import LoradeckError
from loradeck.engine.models import quantization
from loradeck.engine.models.loading import free_memory
from loradeck.engine.serve import params as chat_params
from loradeck.engine.serve import replies as protocol
from loradeck.engine.serve.replies import Failed, Finished, ModelLoaded, Reply, Token
from loradeck.engine.system.process_exit import exit_now

ROLES = ("system", "user", "assistant")


class RequestError(Exception):
    """A request that cannot be served; becomes an ``error`` reply of ``kind``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def fit_context(prompt_tokens: int, context: int | None, max_new_tokens: int) -> int:
    """The new tokens a reply may have once the prompt is in the model's context: the asked
    ``max_new_tokens``, cut to what is left. RequestError when the prompt alone fills it."""
    if not context:
        return max_new_tokens
    if prompt_tokens >= context:
        raise RequestError("request", f"the conversation is {prompt_tokens:,} tokens, as long "
                           f"as the model's context of {context:,} or longer: start a new chat "
                           "(the earlier turns count too) or send a shorter prompt")
    return min(max_new_tokens, context - prompt_tokens)


def validate_params(params: Any, model_defaults: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Sampling params with defaults filled in (the model's generation config first);
    RequestError(kind='params') when bad."""
    if params is not None and not isinstance(params, dict):
        raise RequestError("params", "params must be an object")
    try:
        return chat_params.check(params, model_defaults)
    except ValueError as exc:
        raise RequestError("params", str(exc)) from None


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Chat messages as [{role, content}]; RequestError(kind='request') when malformed."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("request", "messages must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES \
                or not isinstance(m.get("content"), str):
            raise RequestError("request", f"messages[{i}] must be {{role: one of "
                                          f"{'/'.join(ROLES)}, content: text}}")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise RequestError("request", "the last message must be from the user")
    return out


@dataclass
class Job:
    """One generate request and its cancel flag."""

    id: str
    messages: list[dict[str, str]]
    params: dict[str, Any]
    adapter: bool = True
    cancel: threading.Event = field(default_factory=threading.Event)


class Replies:
    """Writes reply lines to the real stdout, one whole line at a time, from any thread."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()

    def send(self, reply: ModelLoaded | Reply) -> None:
        line = protocol.line(reply)
        with self.lock:
            try:
                self.out.write(line + "\n")
                self.out.flush()
            except (BrokenPipeError, ValueError):  # the parent went away
                pass

    def error(self, id: Any, kind: str, message: str) -> None:
        self.send(Failed(id, kind, message))


def _make_streamer(tokenizer):
    """transformers' TextIteratorStreamer (its decoding, as the library keeps it) that notes
    when the first new token came and passes on no empty text."""
    from transformers import TextIteratorStreamer

    class TokenStreamer(TextIteratorStreamer):
        def __init__(self) -> None:
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.first_token_at: float | None = None

        def put(self, value) -> None:
            if self.first_token_at is None and not (self.skip_prompt
                                                    and self.next_tokens_are_prompt):
                self.first_token_at = time.perf_counter()
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text or stream_end:
                super().on_finalized_text(text, stream_end=stream_end)

    return TokenStreamer()


class ChatModel:
    """A loaded model (optionally with a PEFT adapter) and its tokenizer."""

    def __init__(self, request: dict[str, Any]) -> None:
        from loradeck.engine.config import ModelSection
        from loradeck.engine.models.loading import (
            footprint_gb,
            load_model,
            load_tokenizer,
            pick_device,
        )

        name = request.get("model")
        if not isinstance(name, str) or not name:
            raise RequestError("request", "load needs a model (Hub id, directory or demo:tiny)")
        quant = request.get("quantization") or "none"
        if quant not in values(Quantization):
            raise RequestError("request", f"quantization must be one of "
                                          f"{', '.join(values(Quantization))} (got {quant!r})")
        adapter = request.get("adapter") or None
        started = time.perf_counter()
        try:
            self.device = pick_device(request.get("device") or "auto")
            quant, _ = quantization.choose(quant, self.device)
            section = ModelSection(name=name, revision=request.get("revision"),
                                   quantization=quant,
                                   trust_remote_code=bool(request.get("trust_remote_code")))
            model = load_model(section, device=self.device, quantization=quant)
            tok_source = adapter if adapter and _has_tokenizer(adapter) else None
            if tok_source:
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(tok_source)
                if self.tokenizer.pad_token is None:
                    self.tokenizer.pad_token = self.tokenizer.eos_token
            else:
                self.tokenizer = load_tokenizer(section)
        except LoradeckError as exc:
            raise RequestError(exc.kind, exc.line()) from None
        except ValueError as exc:  # pydantic: bad name/revision
            raise RequestError("request", str(exc).splitlines()[0]) from None
        self.has_adapter = False
        if adapter:
            from peft import PeftModel

            if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
                raise RequestError("model", f"{adapter}: no adapter_config.json here")
            from loradeck.engine.quant import qalora

            if qalora.is_qalora_adapter(adapter):  # its base runs on the run's INT4 codes
                try:
                    model = qalora.load_adapter(model, adapter)
                except LoradeckError as exc:
                    raise RequestError(exc.kind, exc.line()) from None
            else:
                model = PeftModel.from_pretrained(model, adapter)
            self.has_adapter = True
        model.eval()
        self.model = model
        self.has_template = bool(getattr(self.tokenizer, "chat_template", None))
        # a model with no template of its own is prompted as a run trained on it would be
        # (templates.resolve's fallback: mistral, chatml or alpaca, by its vocabulary)
        templates.install(self.tokenizer, "auto")
        self.renderer = templates.Renderer(self.tokenizer)
        self.stop_ids = sorted(_eos_ids(model, self.tokenizer)
                               | templates.end_of_turn_ids(self.tokenizer))
        self.param_defaults = chat_params.from_generation_config(
            getattr(model, "generation_config", None))
        self.info = {
            "name": name,
            "adapter": self.has_adapter,
            "adapter_path": adapter,
            "quantization": quant,
            "device": self.device,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "parameters": _count_parameters(model),
            "footprint_gb": footprint_gb(model),
            "chat_template": self.has_template,
            "generation_defaults": self.param_defaults,
            "stop_tokens": [self.tokenizer.convert_ids_to_tokens(i) for i in self.stop_ids],
            "load_s": round(time.perf_counter() - started, 3),
        }

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """The prompt for ``messages``, rendered with the model's template exactly as training
        rendered a row's prompt (templates.Renderer: a system turn the template refuses is
        folded into the first user turn)."""
        try:
            return self.renderer.prompt(messages)
        except LoradeckError as exc:  # e.g. a template that refuses a system role
            raise RequestError("request", f"the chat template rejected the messages: "
                                          f"{exc.message}") from None

    def prompt_ids(self, messages: list[dict[str, str]]):
        """``prompt_text`` tokenized as training tokenized it (special tokens added)."""
        enc = self.tokenizer(self.prompt_text(messages), return_tensors="pt")
        return enc["input_ids"].to(self.model.device), enc["attention_mask"].to(self.model.device)

    def generate(self, job: Job, replies: Replies) -> None:
        """Stream one reply, then send ``done``; raises on failure."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        p = job.params
        context = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        text = self.prompt_text(job.messages)
        if context and len(text) > context * MAX_CHARS_PER_TOKEN:  # too long to tokenize first
            fit_context(context, context, 0)
        enc = self.tokenizer(text, return_tensors="pt")
        input_ids = enc["input_ids"].to(self.model.device)
        attention_mask = enc["attention_mask"].to(self.model.device)
        max_new = fit_context(int(input_ids.shape[1]), context, p["max_new_tokens"])
        streamer = _make_streamer(self.tokenizer)

        class Cancelled(StoppingCriteria):
            def __call__(self, ids, scores, **kwargs):
                stop = job.cancel.is_set()
                return torch.full((ids.shape[0],), stop, dtype=torch.bool, device=ids.device)

        kwargs: dict[str, Any] = {
            "input_ids": input_ids, "attention_mask": attention_mask, "streamer": streamer,
            "max_new_tokens": max_new, "repetition_penalty": p["repetition_penalty"],
            "stopping_criteria": StoppingCriteriaList([Cancelled()]),
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.stop_ids,  # the template's end of turn, and the model's eos
        }
        if p["temperature"] == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=p["temperature"], top_p=p["top_p"],
                          top_k=p["top_k"])
        if p["seed"] is not None:
            torch.manual_seed(p["seed"])
        result: dict[str, Any] = {}
        use_adapter = self.has_adapter and job.adapter

        def run() -> None:
            try:
                with torch.inference_mode():
                    if self.has_adapter and not job.adapter:
                        with self.model.disable_adapter():
                            result["out"] = self.model.generate(**kwargs)
                    else:
                        result["out"] = self.model.generate(**kwargs)
            except BaseException as exc:  # reported by the serving thread
                result["exc"] = exc
                streamer.end()

        started = time.perf_counter()
        thread = threading.Thread(target=run, name=f"generate-{job.id}", daemon=True)
        thread.start()
        for text in streamer:
            if text:
                replies.send(Token(job.id, text))
        thread.join()
        if "exc" in result:
            raise result["exc"]
        elapsed = time.perf_counter() - started
        new = result["out"][0, input_ids.shape[1]:].tolist()
        eos = set(self.stop_ids)
        if job.cancel.is_set():
            reason = FinishReason.CANCELLED
        elif new and new[-1] in eos:
            reason = FinishReason.STOP
        else:
            reason = FinishReason.LENGTH
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        ttft = (streamer.first_token_at - started) if streamer.first_token_at else None
        decode_s = elapsed - (ttft or 0.0)
        tps = (len(new) - 1) / decode_s if len(new) > 1 and decode_s > 0 else (
            len(new) / elapsed if elapsed > 0 else 0.0)
        replies.send(Finished(job.id, text=text, tokens=len(new),
                          ttft_s=None if ttft is None else round(ttft, 4),
                          tokens_per_second=round(tps, 2), finish_reason=reason,
                          prompt_tokens=int(input_ids.shape[1]), elapsed_s=round(elapsed, 4),
                          adapter=use_adapter, params=p))


def _has_tokenizer(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "tokenizer_config.json"))


def _count_parameters(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        qs = getattr(p, "quant_state", None)  # 4-bit: packed storage, real shape in quant_state
        total += math.prod(qs.shape) if qs is not None and getattr(qs, "shape", None) else p.numel()
    return total


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for v in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return ids


def _error_kind(exc: BaseException) -> tuple[str, str]:
    """(kind, message) for an exception raised while serving."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return "oom", ("out of memory: " + text + " (lower max_new_tokens, shorten the chat, "
                       "or load the model in 4bit)")
    return "internal", f"{type(exc).__name__}: {text}"


class ChatServer:
    """Reads requests, keeps one model, runs generate jobs one at a time on a thread."""

    def __init__(self, inp: TextIO, out: TextIO) -> None:
        self.inp = inp
        self.replies = Replies(out)
        self.model: Any = None  # a ChatModel, or a LlamaCppModel for a .gguf file
        self.jobs: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self.pending: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, name="chat-jobs", daemon=True)

    def model_defaults(self) -> dict[str, Any] | None:
        """The loaded model's own sampling defaults (its generation config), if any."""
        return self.model.param_defaults if self.model is not None else None

    def run(self) -> int:
        self.thread.start()
        try:
            for line in self.inp:
                line = line.strip()
                if not line:
                    continue
                if not self.handle(line):
                    break
        finally:
            with self.lock:
                for job in self.pending.values():
                    job.cancel.set()
            self.jobs.put(None)
            self.thread.join(timeout=30)
        return 0

    def handle(self, line: str) -> bool:
        """Dispatch one request line; False to stop reading."""
        try:
            req = json.loads(line)
        except json.JSONDecodeError as exc:
            self.replies.error(None, "request", f"not a JSON line: {exc.msg} at column "
                                                f"{exc.colno}")
            return True
        if not isinstance(req, dict):
            self.replies.error(None, "request", "a request must be a JSON object")
            return True
        typ, rid = req.get("type"), req.get("id")
        if typ == "shutdown":
            return False
        if typ == "cancel":
            with self.lock:
                job = self.pending.get(str(rid))
            if job is not None:
                job.cancel.set()
            return True
        if typ == "load":
            with self.lock:  # a new model: stop whatever the old one is doing
                for job in self.pending.values():
                    job.cancel.set()
            self.jobs.put(("load", req))
            return True
        if typ == "generate":
            if rid is None or rid == "":
                self.replies.error(None, "request", "generate needs an id")
                return True
            try:
                adapter = req.get("adapter", True)
                if not isinstance(adapter, bool):
                    raise RequestError("params", f"adapter must be true or false (got "
                                                 f"{adapter!r})")
                job = Job(id=str(rid), messages=validate_messages(req.get("messages")),
                          params=validate_params(req.get("params"), self.model_defaults()),
                          adapter=adapter)
            except RequestError as exc:
                self.replies.error(rid, exc.kind, exc.message)
                return True
            with self.lock:
                if job.id in self.pending:
                    self.replies.error(rid, "request", f"id {job.id!r} is already in use")
                    return True
                self.pending[job.id] = job
            self.jobs.put(("generate", job))
            return True
        self.replies.error(rid, "request", f"unknown request type {typ!r}; expected load, "
                                           "generate, cancel or shutdown")
        return True

    def _serve(self) -> None:
        while True:
            item = self.jobs.get()
            if item is None:
                return
            kind, payload = item
            if kind == "load":
                self._load(payload)
            else:
                self._generate(payload)

    def _load(self, req: dict[str, Any]) -> None:
        rid = req.get("id")
        old, self.model = self.model, None
        if old is not None:
            del old
            free_memory()
        try:
            if str(req.get("model") or "").lower().endswith(".gguf"):  # llama.cpp, no torch
                from loradeck.engine.serve.llama_cpp_model import LlamaCppModel

                try:
                    self.model = LlamaCppModel(req)
                except LoradeckError as exc:
                    raise RequestError(exc.kind, exc.line()) from None
            else:
                self.model = ChatModel(req)
        except RequestError as exc:
            self.replies.error(rid, exc.kind, exc.message)
            return
        except BaseException as exc:
            free_memory()
            kind, message = _error_kind(exc)
            self.replies.error(rid, kind if kind == "oom" else "model", message)
            return
        self.replies.send(ModelLoaded(rid, self.model.info))

    def _generate(self, job: Job) -> None:
        try:
            if job.cancel.is_set():
                self.replies.send(Finished(job.id, finish_reason=FinishReason.CANCELLED))
                return
            if self.model is None:
                self.replies.error(job.id, "not_loaded", "no model loaded; send a load request "
                                                         "first")
                return
            self.model.generate(job, self.replies)
        except RequestError as exc:
            self.replies.error(job.id, exc.kind, exc.message)
        except BaseException as exc:
            free_memory()
            kind, message = _error_kind(exc)
            self.replies.error(job.id, kind, message)
        finally:
            with self.lock:
                self.pending.pop(job.id, None)


def main() -> int:
    """Serve on the real stdout; anything else written to stdout (fd 1) goes to stderr."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = open(sys.stdin.fileno(), encoding="utf-8", errors="replace", closefd=False)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:
        pass
    # then skip the interpreter's teardown of torch & co (seconds); nothing is left to save
    exit_now(ChatServer(inp, out).run(), out)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
