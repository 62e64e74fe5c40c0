"""The app: first-frame time against a bare Textual app, and keystroke-to-frame latency under load.

First frame: each app is started as a subprocess on a pseudo-terminal (100x32, as a person runs
it: ``python -m loradeck.tui.cli`` for loradeck, ``python -m bench.bare_app`` for the bare app), and the
time from spawning it to the moment its first screen's text (loradeck's navigation bar, the bare
app's title) is written to the terminal is taken; median of N runs, the two apps alternating.

Keystroke latency: a worker process runs LoradeckApp headless under Textual's Pilot while
- a training run's events.jsonl grows by 1,000 log lines a second (plus a metrics event every
  0.1 s) from a separate writer process, with the Train screen following that run, and
- the Chat screen streams a reply at 200 tokens a second (the real AsyncChatClient and Markdown
  stream, fed by bench/stream_worker.py instead of a model).
A key event is handed to the app's driver as a terminal would, and the latency is the time to
the first compositor update that shows its effect (the typed character in the prompt, the new
screen after a screen key, the keys panel after F1); each frame is also turned into the escape
sequences a terminal would receive, so that cost is inside the figure. Reported: p50/p95/max
per scenario (typing while streaming, switching screens, F1 on the Train screen), idle typing
as a reference, and the bare app's typing latency for comparison.

    python -m bench.app_bench --mode quick
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

NAME = "app_bench"
LORADECK_MARKER = b" loradeck "
LORADECK_SETTLED = b"Base model:"  # drawn once the Model screen has read the draft
MODES = {
    "quick": dict(first_frame_runs=7, typed=40, switches=8, f1=8, seconds=None),
    "full": dict(first_frame_runs=15, typed=120, switches=20, f1=20, seconds=None),
}
SIZE = (100, 32)


# ---- first frame ----------------------------------------------------------------------------

def first_frame(cmd: list[str], marker: bytes, env: dict[str, str], size: tuple[int, int] = SIZE,
                timeout: float = 60.0) -> float | None:
    """Seconds from spawning ``cmd`` on a pseudo-terminal until ``marker`` is written to it."""
    return frame_times(cmd, [marker], env, size, timeout)[0]


def frame_times(cmd: list[str], markers: list[bytes], env: dict[str, str],
                size: tuple[int, int] = SIZE, timeout: float = 60.0) -> list[float | None]:
    """Seconds from spawning ``cmd`` on a pseudo-terminal until each of ``markers`` has been
    written to it (None for one never seen)."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
    env = dict(env, TERM="xterm-256color", COLORTERM="truecolor")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env,
                            cwd=str(common.ROOT), start_new_session=True)
    os.close(slave)
    seen = b""
    found: list[float | None] = [None] * len(markers)
    keep = max(len(m) for m in markers)
    try:
        end = t0 + timeout
        while time.perf_counter() < end and None in found:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:
                break
            seen = seen[-keep:] + chunk
            now = time.perf_counter() - t0
            for i, marker in enumerate(markers):
                if found[i] is None and marker in seen:
                    found[i] = now
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
    return found


def trace_parts(trace: dict[str, Any], spawned: float) -> dict[str, float]:
    """One start's parts in ms: each span between two marks of loradeck.tui.startup_trace
    (``a -> b``; the first from the spawn), and each named part inside them."""
    out: dict[str, float] = {}
    prev_name, prev = "spawn", spawned
    for name, at in trace.get("marks", []):
        out[f"{prev_name} -> {name}"] = round((at - prev) * 1000, 1)
        prev_name, prev = name, at
    for name, seconds in trace.get("parts", {}).items():
        out[f"  in it: {name}"] = round(seconds * 1000, 1)
    return out


def parts_table(parts: list[dict[str, float]]) -> list[dict[str, Any]]:
    """The median of each part over the starts, in the order they happen."""
    names: dict[str, None] = {}
    for p in parts:
        names.update(dict.fromkeys(p))
    return [{"part": n, "median_ms": round(statistics.median(v), 1), "n": len(v)}
            for n in names if (v := [p[n] for p in parts if n in p])]


def first_frames(runs: int, env: dict[str, str]) -> dict[str, Any]:
    from bench.bare_app import MARKER

    apps = {"loradeck": ([sys.executable, "-m", "loradeck.tui.cli"], LORADECK_MARKER),
            "bare": ([sys.executable, "-m", "bench.bare_app"], MARKER.encode())}
    times: dict[str, list[float | None]] = {k: [] for k in apps}
    settled: list[float | None] = []
    parts: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="loradeck-trace-") as tmp:
        trace = Path(tmp) / "start.json"
        traced = dict(env, LORADECK_TRACE_START=str(trace))
        for _ in range(runs):
            for name, (cmd, marker) in apps.items():
                if name == "loradeck":
                    trace.unlink(missing_ok=True)
                    spawned = time.time()
                    first, done = frame_times(cmd, [marker, LORADECK_SETTLED], traced)
                    times[name].append(first)
                    settled.append(done)
                    if trace.is_file():
                        parts.append(trace_parts(json.loads(trace.read_text()), spawned))
                else:
                    times[name].append(first_frame(cmd, marker, env))
    out: dict[str, Any] = {name: common.summary(v) for name, v in times.items()}
    # the first frame is the navigation line; the rest of the Model screen and the draft's
    # model follow right after it
    out["loradeck_settled"] = common.summary(settled)
    out["parts"] = parts_table(parts)
    lo, bare = out["loradeck"]["median"], out["bare"]["median"]
    done = out["loradeck_settled"]["median"]
    out["ratio"] = round(lo / bare, 3) if lo and bare else None
    out["settled_ratio"] = round(done / bare, 3) if done and bare else None
    out["target"] = "first frame within 1.0x the bare app, the whole Model screen within 1.5x"
    out["met"] = bool(out["ratio"] is not None and out["ratio"] <= 1.0
                      and out["settled_ratio"] is not None and out["settled_ratio"] <= 1.5)
    return out


# ---- load: a training run's events ----------------------------------------------------------

def write_events(path: str, rate: float, seconds: float) -> int:
    """Append ``rate`` log events a second (and a metrics event every 0.1 s) for ``seconds``."""
    from loradeck.engine.runs.events import EventWriter

    w = EventWriter(path)
    w.status("training", "benchmark load")
    start = time.perf_counter()
    sent = step = 0
    tick = 0.01
    while time.perf_counter() - start < seconds:
        due = int((time.perf_counter() - start) * rate)
        while sent < due:
            w.log(f"step {step} batch {sent}: loss 1.{sent % 1000:03d} grad_norm 0.{sent % 97:02d}"
                  " tokens 4096 lr 2.0e-04")
            sent += 1
        if sent // 100 > step:
            step = sent // 100
            w.emit("metrics", step=step, max_steps=100000, epoch=round(step / 1000, 4),
                   loss=round(2.0 - step * 1e-4, 4), learning_rate=2e-4, grad_norm=0.5,
                   tokens_per_second=4000.0, memory_gb=1.0)
        time.sleep(tick)
    return sent


# ---- keystroke latency (worker) -------------------------------------------------------------

class FrameClock:
    """Wraps the app's display step: every compositor update is rendered to terminal bytes
    (written to /dev/null) and stamped; a pending key waits for the first frame that shows it."""

    def __init__(self, app) -> None:
        self.app = app
        self.frames = 0
        self.pending: tuple[float, Any, asyncio.Event, list[float], bool] | None = None
        self.sink = os.open(os.devnull, os.O_WRONLY)
        self._orig = app._display

    def install(self) -> None:
        from textual._compositor import CompositorUpdate, LayoutUpdate

        def display(screen, renderable) -> None:
            self._orig(screen, renderable)
            if renderable is None or self.app._batch_count:
                return
            if isinstance(renderable, CompositorUpdate):
                os.write(self.sink, renderable.render_segments(self.app.console).encode())
            now = time.perf_counter()
            self.frames += 1
            if self.pending is not None:
                t0, shows, done, out, whole = self.pending
                if shows() and (not whole or isinstance(renderable, LayoutUpdate)):
                    out.append(now - t0)
                    self.pending = None
                    done.set()

        self.app._display = display

    def _event(self, key: str):
        import unicodedata

        from textual import events
        from textual.keys import _get_unicode_name_from_key

        try:
            char = unicodedata.lookup(_get_unicode_name_from_key(key))
        except KeyError:
            char = key if len(key) == 1 else None
        event = events.Key(key, char)
        event.set_sender(self.app)
        return event

    async def send(self, key: str, then: float = 0.3) -> None:
        """Send ``key`` unmeasured, then wait ``then`` seconds (Pilot's press and pause wait
        for an idle screen, which a screen under load never is)."""
        self.app._driver.send_message(self._event(key))
        await asyncio.sleep(then)

    async def press(self, key: str, shows, timeout: float = 5.0, whole: bool = False
                    ) -> float | None:
        """Send ``key`` as the terminal driver would; seconds to the frame that ``shows()`` it
        (``whole``: a frame of the whole screen, as a screen switch must draw; a partial frame
        would show parts of the new screen over the old one)."""
        event = self._event(key)
        done = asyncio.Event()
        out: list[float] = []
        self.pending = (time.perf_counter(), shows, done, out, whole)
        self.app._driver.send_message(event)
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except TimeoutError:
            self.pending = None
            return None
        return out[0]


def lat_summary(values: list[float | None]) -> dict[str, Any]:
    ms = [v * 1000 for v in values if v is not None]
    return {"n": len(values), "missed": sum(v is None for v in values),
            "p50_ms": _r(common.percentile(ms, 50)), "p95_ms": _r(common.percentile(ms, 95)),
            "max_ms": _r(max(ms) if ms else None),
            "over_50ms": sum(v > 50 for v in ms), "values_ms": [round(v, 1) for v in ms]}


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


async def _typing(clock: FrameClock, field, n: int, rng: random.Random) -> list[float | None]:
    """Type ``n`` letters into ``field`` at a person's pace; latency of each echo."""
    out = []
    for _ in range(n):
        ch = rng.choice("abcdefghijklmnopqrstuvwxyz")
        want = field.value + ch
        out.append(await clock.press(ch, lambda w=want: field.value == w))
        await asyncio.sleep(rng.uniform(0.05, 0.15))
    return out


async def loradeck_latency(a, home: Path) -> dict[str, Any]:
    """Scenarios on LoradeckApp under the training-log and chat-stream loads."""
    os.environ["LORADECK_HOME"] = str(home)
    importlib.import_module("tui")  # first: it sets Textual's frame rate, as `loradeck` does
    from textual.widgets import Input

    import loradeck.engine.serve.client as chat_client
    from loradeck.engine import config as cfg
    from loradeck.engine.runs import lock as joblock
    from loradeck.engine.runs.store import RunStore
    from loradeck.tui.app import LoradeckApp

    real_worker_command = chat_client.worker_command
    chat_client.worker_command = lambda: [sys.executable, "-m", "bench.stream_worker",
                                          "--rate", str(a.token_rate)]
    rng = random.Random(0)
    run = RunStore().create(cfg.demo_config(), name="app-bench")
    total = 5 + (a.typed + a.switches * 2 + a.f1) * 0.35 + 30
    writer = subprocess.Popen([sys.executable, "-m", "bench.app_bench", "--write-events",
                               str(run.events_path), "--rate", str(a.line_rate),
                               "--seconds", str(total)], env=common.bench_env(a.threads),
                              cwd=str(common.ROOT))
    run.mark_process(writer.pid, phase="training")
    joblock.acquire(run.dir, run.id)  # this process stands in for the job: the run reads alive
    result: dict[str, Any] = {}
    try:
        app = LoradeckApp(tune_gc=True)  # as `loradeck` starts it
        clock = FrameClock(app)
        async with app.run_test(size=SIZE):
            clock.install()
            await asyncio.sleep(0.5)
            # reference: typing with no load yet, on the Chat screen
            await clock.send("c", 0.5)
            chat = app.screen
            prompt = chat.query_one("#chat-prompt", Input)
            prompt.focus()
            await asyncio.sleep(0.2)
            result["idle_typing"] = lat_summary(await _typing(clock, prompt, max(4, a.typed // 4),
                                                              rng))
            # load 1: the Train screen follows the run that logs 1,000 lines a second
            await clock.send("escape", 0.1)
            app.current_run_id = run.id
            await clock.send("t", 1.5)
            train_lines = len(app.screen.query_one("#train-log").lines)
            # load 2: a reply streaming at 200 tokens a second on the Chat screen
            await clock.send("c", 0.3)
            chat.query_one("#chat-target", Input).value = "demo:tiny"
            chat.query_one("#set-max_new_tokens", Input).value = str(10 ** 6)
            prompt.value = "Tell me a long story"
            prompt.focus()
            await clock.send("enter", 0.1)
            await _until(lambda: chat.generating and any(r.text for r in _replies(chat)), 30)
            await asyncio.sleep(1.0)
            before = _reply_len(chat)
            t_stream = time.perf_counter()
            frames0 = clock.frames
            result["typing_under_load"] = lat_summary(await _typing(clock, prompt, a.typed, rng))
            # screen switches: chat -> train -> chat
            switches: list[float | None] = []
            for _ in range(a.switches):
                if app._typing_focused():
                    await clock.send("escape", 0.05)
                switches.append(await clock.press("t", lambda: _showing(app, "train"), whole=True))
                await asyncio.sleep(rng.uniform(0.2, 0.4))
                switches.append(await clock.press("c", lambda: _showing(app, "chat"), whole=True))
                await asyncio.sleep(rng.uniform(0.2, 0.4))
            result["switch_screens_under_load"] = lat_summary(switches)
            # F1 (keys panel) on the Train screen while its log floods
            if app._typing_focused():
                await clock.send("escape", 0.05)
            await clock.press("t", lambda: _showing(app, "train"))
            await asyncio.sleep(0.5)
            f1: list[float | None] = []
            for _ in range(a.f1):
                want = not _keys_shown(app)
                f1.append(await clock.press("f1", lambda w=want: _keys_shown(app) == w))
                await asyncio.sleep(rng.uniform(0.2, 0.4))
            result["f1_on_train_under_load"] = lat_summary(f1)
            elapsed = time.perf_counter() - t_stream
            streamed = _reply_len(chat) - before
            result["load"] = {
                "log_lines_per_second_asked": a.line_rate,
                "tokens_per_second_asked": a.token_rate,
                "reply_chars_per_second_seen": round(streamed / elapsed, 1),
                "reply_tokens_per_second_seen": round(streamed / elapsed / _chars_per_token(), 1),
                "train_log_lines_after_1_5_s": train_lines,
                "frames_per_second": round((clock.frames - frames0) / elapsed, 1),
                "still_streaming": bool(chat.generating),
            }
            await chat.action_stop()
            await asyncio.sleep(0.3)
    finally:
        chat_client.worker_command = real_worker_command
        writer.terminate()
        writer.wait(timeout=10)
    return result


def _chars_per_token() -> float:
    from bench.stream_worker import token_text

    return sum(len(token_text(i)) for i in range(6000)) / 6000


def _replies(chat) -> list[Any]:
    from loradeck.tui.widgets.chat_log import ReplyView

    return list(chat.query(ReplyView))


def _reply_len(chat) -> int:
    return sum(len(r.text) for r in _replies(chat))


def _keys_shown(app) -> bool:
    """Is the keys panel (F1) shown on the current screen?"""
    from loradeck.tui.app import keys_panel_shown

    return keys_panel_shown(app.screen)


def _showing(app, mode: str) -> bool:
    return app.current_mode == mode and getattr(app.screen, "MODE", None) == mode


async def _until(cond, timeout: float) -> None:
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the chat stream did not start")


async def bare_latency(a) -> dict[str, Any]:
    """The bare app: typing into its input and switching its two screens with no load, then
    typing while its Markdown pane streams ``token_rate`` tokens a second through
    ``Markdown.get_stream``: the floor Textual itself sets on this machine."""
    from textual.widgets import Input, Markdown

    from bench.bare_app import BareApp
    from bench.stream_worker import token_text

    app = BareApp()
    clock = FrameClock(app)
    rng = random.Random(1)
    async with app.run_test(size=SIZE):
        clock.install()
        await asyncio.sleep(0.3)
        field = app.screen.query_one("#prompt", Input)
        typing = await _typing(clock, field, max(4, a.typed // 2), rng)
        switches: list[float | None] = []
        for _ in range(a.switches):
            for key, mode in (("2", "two"), ("1", "one")):
                await clock.send("escape", 0.05)
                switches.append(await clock.press(key, lambda m=mode: app.current_mode == m
                                                  and getattr(app.screen, "MODE", "") == m,
                                                  whole=True))
                await asyncio.sleep(rng.uniform(0.2, 0.4))
        field = app.screen.query_one("#prompt", Input)
        field.focus()
        stream = Markdown.get_stream(app.screen.query_one("#reply", Markdown))
        sent = [0]

        async def feed() -> None:
            start = time.perf_counter()
            while True:
                due = int((time.perf_counter() - start) * a.token_rate)
                while sent[0] < due:
                    await stream.write(token_text(sent[0]))
                    sent[0] += 1
                await asyncio.sleep(0.005)

        feeder = asyncio.create_task(feed())
        await asyncio.sleep(1.0)
        t0, n0 = time.perf_counter(), sent[0]
        streaming = await _typing(clock, field, a.typed, rng)
        rate = (sent[0] - n0) / (time.perf_counter() - t0)
        feeder.cancel()
        await stream.stop()
        return {"idle_typing": lat_summary(typing), "switch_screens": lat_summary(switches),
                "typing_while_streaming": lat_summary(streaming),
                "stream_tokens_per_second_fed": round(rate, 1)}


def latency(a) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="loradeck-app-bench-") as tmp:
        lo = asyncio.run(loradeck_latency(a, Path(tmp) / "home"))
    bare = asyncio.run(bare_latency(a))
    worst = max((v.get("max_ms") or 0) for k, v in lo.items() if k.endswith("under_load"))
    return {"loradeck": lo, "bare": bare, "worst_under_load_ms": worst,
            "target": "no keystroke waiting over 50 ms under load", "met": worst <= 50}


# ---- orchestration --------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.app_bench",
                                description="first frame and keystroke latency of the app")
    p.add_argument("--mode", choices=sorted(MODES), default="quick")
    p.add_argument("--first-frame-runs", type=int)
    p.add_argument("--typed", type=int, help="letters typed while streaming")
    p.add_argument("--switches", type=int, help="train/chat round trips")
    p.add_argument("--f1", type=int, help="F1 presses on the Train screen")
    p.add_argument("--line-rate", type=float, default=1000.0, help="log lines per second")
    p.add_argument("--token-rate", type=float, default=200.0, help="chat tokens per second")
    p.add_argument("--threads", type=int)
    p.add_argument("--skip-first-frame", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--inline", action="store_true", help="latency in this process (tests)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--write-events", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if a.write_events:
        write_events(a.write_events, a.rate, a.seconds)
        return 0
    mode = MODES[a.mode]
    a.first_frame_runs = a.first_frame_runs or mode["first_frame_runs"]
    a.typed = a.typed or mode["typed"]
    a.switches = a.switches or mode["switches"]
    a.f1 = a.f1 or mode["f1"]
    if a.worker:
        common.write_json(a.result, latency(a))
        return 0
    a.threads = a.threads or int(os.environ.get("OMP_NUM_THREADS") or 1)
    common.set_threads(a.threads)
    result = common.result_header(NAME, a.mode, argv)
    result["settings"] = {k: getattr(a, k) for k in ("first_frame_runs", "typed", "switches",
                                                     "f1", "line_rate", "token_rate")}
    result["settings"]["terminal_size"] = list(SIZE)
    with tempfile.TemporaryDirectory(prefix="loradeck-app-bench-") as tmp:
        env = common.bench_env(a.threads, {"LORADECK_HOME": str(Path(tmp) / "home")})
        if not a.skip_first_frame:
            result["load_before_first_frame"] = common.load_now()
            result["first_frame"] = first_frames(a.first_frame_runs, env)
            ff = result["first_frame"]
            print(f"first frame: loradeck {ff['loradeck']['median']} s, bare "
                  f"{ff['bare']['median']} s, ratio {ff['ratio']}; loradeck settled "
                  f"{ff['loradeck_settled']['median']} s, ratio {ff['settled_ratio']}",
                  flush=True)
            for row in ff["parts"]:
                print(f"  {row['part']:<52} {row['median_ms']:>7.1f} ms", flush=True)
    if not a.skip_latency:
        result["load_before_latency"] = common.load_now()
        if a.inline:
            result["latency"] = latency(a)
        else:
            args = ["--typed", str(a.typed), "--switches", str(a.switches), "--f1", str(a.f1),
                    "--line-rate", str(a.line_rate), "--token-rate", str(a.token_rate)]
            result["latency"] = common.run_worker(f"bench.{NAME}", args,
                                                  env=common.bench_env(a.threads),
                                                  timeout=a.timeout)
        lat = result["latency"]
        if "error" in lat:
            print(f"latency: error: {lat['error']}")
        else:
            for k, v in lat["loradeck"].items():
                if isinstance(v, dict) and "p50_ms" in v:
                    print(f"{k}: p50 {v['p50_ms']} ms, p95 {v['p95_ms']} ms, max {v['max_ms']} "
                          f"ms", flush=True)
    out = a.out or common.default_out(NAME, a.mode, "cpu")
    common.finish(result, out)
    print(f"wrote {out}")
    print(json.dumps({k: result.get(k, {}).get("met") for k in ("first_frame", "latency")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
