"""An evaluation as a job that outlives the app: ``python -m loradeck.engine.evals.job RUN_DIR
REQUEST.json``, started in its own session with its output in RUN/eval/<time>.log; it reports
through the run's events (``eval_progress``, ``eval``, or an ``error``).

``start`` (light: the standard library and the run store) is what the app calls.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from loradeck.engine.errors import LoradeckError
from loradeck.engine.evals.report import EVAL_DIR
from loradeck.engine.runs import run_files
from loradeck.engine.runs.events import EventWriter
from loradeck.engine.runs.store import Run, RunStore
from loradeck.engine.system.process_exit import exit_now


def start(run: Run, request: dict, gpus: list[str] | None = None) -> subprocess.Popen:
    """Start the evaluation of ``run`` detached (on ``gpus``, the queue's choice, when given);
    returns the process (reaped in a thread)."""
    folder = run_files.real_dir(run.dir / EVAL_DIR)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    spec = folder / f".request-{stamp}-{os.getpid()}.json"
    run_files.write_text(spec, json.dumps(request))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "TQDM_DISABLE": "1", **({"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus else {})}
    with run_files.append_handle(folder / f"{stamp}.log") as log:
        proc = subprocess.Popen([sys.executable, "-m", "loradeck.engine.evals.job",
                                 str(run.dir), str(spec)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=env, cwd=str(run.dir))
    threading.Thread(target=proc.wait, name=f"reap-eval-{run.id}", daemon=True).start()
    return proc


def main(argv: list[str] | None = None) -> int:
    from loradeck.engine.evals.evaluate import EvalRequest, evaluate

    p = argparse.ArgumentParser(prog="python -m loradeck.engine.evals.job",
                                description="evaluate a run (see loradeck eval)")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("request", metavar="REQUEST.json")
    args = p.parse_args(argv)
    run = RunStore().resolve(args.run)
    events = EventWriter(run.events_path)
    spec = Path(args.request)
    try:
        req = EvalRequest.from_dict(json.loads(spec.read_text(encoding="utf-8")))
        spec.unlink(missing_ok=True)
        _, path = evaluate(run, req, events=events, say=lambda s: print(s, flush=True))
    except LoradeckError as exc:
        events.error(**exc.to_event())
        print(f"loradeck eval: {exc.line()}", file=sys.stderr)
        return exc.kind.exit_status
    except Exception as exc:  # the app shows the error event; the log has the traceback
        events.error("internal", f"evaluation failed: {type(exc).__name__}: {exc}",
                     "see the log under RUN/eval/")
        raise
    print(f"evaluation: {path}")
    return 0


if __name__ == "__main__":
    exit_now(main())
