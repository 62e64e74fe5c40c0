"""A load generator for the app benchmark: speaks the chat worker's JSON-lines protocol and
streams tokens at a fixed rate, with no model behind it.

The app benchmark points ``loradeck.engine.serve.client.worker_command`` at this module so the Chat screen,
its AsyncChatClient and its Markdown stream run exactly as with the real worker, while the token
rate is the one asked for (``--rate``, tokens per second) rather than whatever a model manages.

    python -m bench.stream_worker --rate 200
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from loradeck.engine.enums import FinishReason
from loradeck.engine.serve import replies as protocol
from loradeck.engine.serve.replies import Finished, ModelLoaded, Reply, Token

WORDS = ("the adapter learns a small update to each layer while the base stays frozen and "
         "quantized so a large model fits on one card; 학습은 어댑터만 바꾸고 기본 모델은 "
         "그대로 둡니다. ").split(" ")


def token_text(i: int) -> str:
    """The i-th streamed piece: words, with a paragraph break every 60 pieces and a list item
    now and then, so the Markdown stream has blocks to lay out."""
    word = WORDS[i % len(WORDS)] or "and"
    if i % 60 == 59:
        return word + ".\n\n"
    if i % 97 == 96:
        return "\n- " + word
    return word + " "


class StreamWorker:
    def __init__(self, rate: float, out=sys.stdout) -> None:
        self.rate = rate
        self.out = out
        self.lock = threading.Lock()
        self.cancel: dict[str, threading.Event] = {}

    def send(self, reply: ModelLoaded | Reply) -> None:
        with self.lock:
            self.out.write(protocol.line(reply) + "\n")
            self.out.flush()

    def stream(self, rid: str, n: int) -> None:
        stop = self.cancel.setdefault(rid, threading.Event())
        start = time.perf_counter()
        sent = 0
        parts = []
        for i in range(n):
            due = start + i / self.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if stop.is_set():
                break
            text = token_text(i)
            parts.append(text)
            self.send(Token(rid, text))
            sent += 1
        elapsed = time.perf_counter() - start
        self.send(Finished(rid, text="".join(parts), tokens=sent, ttft_s=0.0,
                       tokens_per_second=round(sent / elapsed, 2) if elapsed > 0 else 0.0,
                       finish_reason=FinishReason.CANCELLED if stop.is_set()
                       else FinishReason.LENGTH, elapsed_s=round(elapsed, 4)))

    def run(self, inp=sys.stdin) -> int:
        for line in inp:
            try:
                req = json.loads(line)
            except json.JSONDecodeError:
                continue
            typ, rid = req.get("type"), req.get("id")
            if typ == "shutdown":
                break
            if typ == "load":
                self.send(ModelLoaded(rid or "load",
                                 {"name": req.get("model"), "adapter": False, "device": "cpu",
                                  "dtype": "none", "parameters": 0, "quantization": "none",
                                  "load_s": 0.0}))
            elif typ == "generate":
                n = int((req.get("params") or {}).get("max_new_tokens") or 256)
                threading.Thread(target=self.stream, args=(str(rid), n), daemon=True).start()
            elif typ == "cancel":
                self.cancel.setdefault(str(rid), threading.Event()).set()
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stream_worker")
    p.add_argument("--rate", type=float, default=200.0, help="tokens per second")
    a = p.parse_args(argv)
    return StreamWorker(a.rate).run()


if __name__ == "__main__":
    raise SystemExit(main())
