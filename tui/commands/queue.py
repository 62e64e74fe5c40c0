"""``loradeck queue``: runs lined up to train one after another (or side by side, each on its
own GPUs) by a runner that outlives SSH.

    loradeck queue add CONFIG [--set K=V]... [--sweep K=V1,V2]... [--sweep-name NAME] [--eval]
    loradeck queue [--json]          the entries in order, and the runner
    loradeck queue start | stop [--now] | rm RUN | move RUN POSITION
"""

from __future__ import annotations

import argparse
import json
import time

from loradeck.tui.commands.base import Command, add_set, add_trust


def _store():
    from loradeck.engine.queue.store import QueueStore

    return QueueStore()


def add(args: argparse.Namespace) -> int:
    from loradeck.engine.queue import sweep
    from loradeck.engine.queue.enqueue import enqueue
    from loradeck.tui.commands.train import load_config

    swept = sweep.parse(args.sweep or [])
    combos = sweep.combinations(swept)
    name = args.sweep_name or (f"sweep-{time.strftime('%Y%m%d-%H%M%S')}" if swept else None)
    configs = []
    for values in combos:
        config = load_config(args.config, [*args.overrides, *(f"{k}={v}" for k, v in
                                                              values.items())])
        if swept:  # named for its values (run_name keeps to the characters a name allows)
            base = config.run.name or config.model.name.rstrip("/").rsplit("/", 1)[-1]
            named = config.run.model_copy(update={"name": sweep.run_name(base, values)})
            config = config.model_copy(update={"run": named})
        configs.append(config)
    evaluate = eval_request(args) if args.eval or args.eval_prompts else None
    queued = enqueue(configs, values=combos if swept else None, sweep=name if swept else None,
                     eval_request=evaluate, trust_remote_code=args.trust_remote_code)
    for line in queued.warnings:
        print(f"warning: {line}")
    for run in queued.runs:
        print(run.id)
    if queued.stopped:
        print("the queue is stopped: loradeck queue start runs it again")
    return 0


def eval_request(args: argparse.Namespace) -> dict:
    """``--eval``: what ``loradeck eval`` does on each run once it is trained (checked now)."""
    import importlib.util
    import os

    from loradeck.engine.errors import LoradeckError
    from loradeck.engine.evals import rows
    from loradeck.engine.evals.evaluate import EvalRequest

    for module in ("sacrebleu", "rouge_score"):
        if importlib.util.find_spec(module) is None:
            raise LoradeckError(f"--eval needs {module} to score the answers", kind="config",
                                where="--eval", hint="pip install 'loradeck[eval]'")
    prompts = os.path.abspath(args.eval_prompts) if args.eval_prompts else None
    if prompts:
        rows.from_file(prompts)  # one line naming a bad row, before anything is queued
    return EvalRequest(prompts=prompts, rows=args.eval_rows).to_dict()


def show(args: argparse.Namespace) -> int:
    from loradeck.engine.queue.enqueue import wake

    store = _store()
    status = wake(store)
    from loradeck.engine.queue import runner

    entries = store.entries()
    stopped = bool(store.flag(runner.STOPPED_FLAG))
    if args.json:
        print(json.dumps({"entries": [e.to_dict() for e in entries], "runner": status,
                          "stopped": stopped}))
        return 0
    if not entries:
        print("the queue is empty: add runs with loradeck queue add CONFIG")
    for i, e in enumerate(entries, start=1):
        values = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in e.sweep_values.items())
        gpus = f"GPUs {','.join(e.gpus)}" if e.gpus else ""
        print("  ".join(x for x in (f"{i:>3}", f"{e.state:<9}", e.run_id, gpus, values) if x))
    runner_text = f"runner pid {status['pid']}" if status["alive"] else "no runner"
    print(f"{runner_text}" + (" · stopped: loradeck queue start resumes it" if stopped else ""))
    return 0


def start(args: argparse.Namespace) -> int:
    from loradeck.engine.queue import runner
    from loradeck.engine.queue.enqueue import wake

    store = _store()
    store.set_flag(runner.STOPPED_FLAG, None)
    status = wake(store)
    print(f"runner pid {status['pid']}" if status["alive"] else "nothing to run")
    return 0


def stop(args: argparse.Namespace) -> int:
    from loradeck.engine.enums import QueueState
    from loradeck.engine.queue import runner
    from loradeck.engine.runs.store import RunStore
    from loradeck.engine.train import launch

    store = _store()
    store.set_flag(runner.STOPPED_FLAG, "1")
    running = [e for e in store.entries() if e.state in (QueueState.STARTING,
                                                        QueueState.RUNNING)]
    if args.now:
        for e in running:
            run = RunStore().resolve(e.run_id)
            if run.alive():
                launch.request_stop(run)
                print(f"{e.run_id}: stopping (a checkpoint first)")
    print("the queue stops " + ("now" if args.now or not running else
                                "after the run going now") + "; loradeck queue start resumes it")
    return 0


def remove(args: argparse.Namespace) -> int:
    entry = _store().cancel(args.run)
    print(f"{entry.run_id}: cancelled")
    return 0


def move(args: argparse.Namespace) -> int:
    store = _store()
    store.move(args.run, args.position)
    print(f"moved {args.run} to position {args.position} of the waiting runs")
    return 0


ACTIONS = {"add": add, "start": start, "stop": stop, "rm": remove, "move": move}


class QueueCommand(Command):
    name = "queue"
    help = "line up runs (and sweeps) for a runner that outlives SSH"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="the queue as JSON")
        sub = parser.add_subparsers(dest="action", metavar="ACTION")
        p = sub.add_parser("add", help="check runs, then queue them (one id per line)")
        p.add_argument("config", metavar="CONFIG", help="a YAML config, or demo")
        add_set(p)
        p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                       help="one run per value; several --sweep keys give every combination")
        p.add_argument("--sweep-name", metavar="NAME", help="the sweep's name (default: "
                                                            "sweep-DATE-TIME)")
        p.add_argument("--eval", action="store_true",
                       help="run loradeck eval on each run once it is trained (the base "
                            "against the adapter on its held-out rows), on its GPUs")
        p.add_argument("--eval-prompts", metavar="FILE",
                       help="with --eval: these prompts instead (implies --eval)")
        p.add_argument("--eval-rows", type=int, metavar="N",
                       help="with --eval: the first N rows only")
        add_trust(p)
        sub.add_parser("start", help="run the queue (again), starting a runner if none runs")
        p = sub.add_parser("stop", help="stop the queue after the runs going now")
        p.add_argument("--now", action="store_true",
                       help="and stop those runs too (each saves a checkpoint first)")
        p = sub.add_parser("rm", help="take a waiting run out of the queue")
        p.add_argument("run", metavar="RUN")
        p = sub.add_parser("move", help="put a waiting run at POSITION (1: next)")
        p.add_argument("run", metavar="RUN")
        p.add_argument("position", type=int, metavar="POSITION")

    def run(self, args: argparse.Namespace) -> int:
        return ACTIONS.get(args.action, show)(args)


COMMAND = QueueCommand()
