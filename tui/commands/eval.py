"""``loradeck eval RUN``: the run's held-out rows (or --prompts) answered by the base, the
adapter, its checkpoints and its GGUF files, scored, judged, and saved in RUN/eval/."""

from __future__ import annotations

import argparse
import json
import os
import sys

from loradeck.engine.enums import EvalMetric, GGUFType, values
from loradeck.engine.runs.store import RunStore
from loradeck.tui.commands.base import Command, add_run


def eval_run(args: argparse.Namespace) -> int:
    from loradeck.engine.evals import evaluate as ev
    from loradeck.engine.evals import report

    run = RunStore().resolve(args.run)
    req = ev.EvalRequest(prompts=args.prompts, rows=args.rows,
                         max_new_tokens=args.max_new_tokens, checkpoints=args.checkpoints,
                         gguf=list(args.gguf or []), judge=args.judge, metric=args.metric,
                         judge_template=args.judge_template or run.config().eval.judge_template,
                         tasks=[t for t in (args.tasks or "").split(",") if t],
                         limit=args.limit, task_path=args.task_path,
                         batch_size=args.batch_size, while_training=args.while_training)
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress comes as loradeck's own lines
    ev.check(run, req)  # one line, before any model loads
    from loradeck.engine.publish.merge import quiet_libraries

    quiet_libraries()
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else \
        (lambda line: print(line, flush=True))
    result, path = ev.evaluate(run, req, say=say)
    if args.json:
        print(json.dumps({"run": run.id, "path": str(path), "rows": len(result.rows),
                          "models": result.models, "best_checkpoint": result.best_checkpoint,
                          "judge": result.judge, "tasks": result.tasks,
                          "arena": result.arena}, ensure_ascii=False))
        return 0
    print()
    print(report.markdown(result).split("\n", 2)[2].strip())
    print(f"\nsaved: {path} (and {path.with_suffix('.md').name})")
    return 0


class EvalCommand(Command):
    name = "eval"
    help = "score a run's answers against its base, checkpoints and GGUF files"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run(parser)
        parser.add_argument("--prompts", metavar="FILE",
                            help="a JSONL file of {prompt, reference} or {messages} rows "
                                 "(default: the run's held-out eval rows)")
        parser.add_argument("--rows", type=int, metavar="N", help="the first N rows only")
        parser.add_argument("--max-new-tokens", type=int, default=128, metavar="N",
                            help="new tokens at most in each answer, for every model "
                                 "(default 128)")
        parser.add_argument("--checkpoints", action="store_true",
                            help="every complete checkpoint too, the best one marked")
        parser.add_argument("--gguf", action="append", metavar="Q",
                            choices=values(GGUFType),
                            help="an exported GGUF file of this type too, through llama.cpp "
                                 "(repeatable)")
        parser.add_argument("--judge", metavar="TARGET",
                            help="a pairwise judge: an OpenAI-compatible URL (key from "
                                 "LORADECK_JUDGE_KEY), or a run, model or .gguf that "
                                 "loradeck api serves on loopback for the evaluation")
        parser.add_argument("--judge-template", metavar="FILE",
                            help="the judge prompt as a Jinja file (default: eval.judge_"
                                 "template, else loradeck's)")
        parser.add_argument("--metric", default=EvalMetric.CHRF, choices=values(EvalMetric),
                            help="what picks the best checkpoint (default chrf; loss: the "
                                 "lowest)")
        parser.add_argument("--tasks", metavar="T1,T2",
                            help="lm-evaluation-harness tasks on the base and the adapter")
        parser.add_argument("--limit", type=int, metavar="N",
                            help="examples per lm-eval task (the same for both models)")
        parser.add_argument("--task-path", metavar="DIR",
                            help="a folder of lm-eval task YAML files (local tasks)")
        parser.add_argument("--batch-size", type=int, default=8, metavar="N",
                            help="prompts answered together (default 8)")
        parser.add_argument("--while-training", action="store_true",
                            help="evaluate while the run's training job runs (shares the GPU)")
        parser.add_argument("--json", action="store_true",
                            help="print the result as JSON (progress goes to stderr)")

    def run(self, args: argparse.Namespace) -> int:
        return eval_run(args)


COMMAND = EvalCommand()
